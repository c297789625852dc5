"""Layout conditions for ControlNet: Canny edges, scribbles and OpenPose body poses.

Everything here works on PIL images and plain Python data; nothing imports Gradio, and
controlnet-aux (slow to import: it loads every detector) is imported only inside the
functions that need real annotator weights.

Poses use the 18-joint COCO order of OpenPose (``JOINTS``), in pixel coordinates of a
canvas of ``width`` x ``height``; confidence 0 marks a missing joint (a JSON confidence <= 0
is read as missing, and its coordinates are ignored). They travel as the
OpenPose JSON that ControlNet tools exchange::

    {"canvas_width": W, "canvas_height": H,
     "people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ... 54 numbers]}]}

``pose_from_json`` accepts pixel coordinates or coordinates normalised to [0, 1]: when every
present joint (confidence > 0) has x <= 1 and y <= 1, the coordinates are read as normalised
and multiplied by the canvas size. It also accepts the 25-joint BODY_25 layout (75 numbers),
dropping MidHip and the feet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

JOINTS: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
)
_J = {name: i for i, name in enumerate(JOINTS)}

# The OpenPose colour of each joint, in RGB; limb i is drawn in COLORS[i] at 60 % brightness.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# The 17 OpenPose limbs as (joint index, joint index, RGB colour), in drawing order.
_LIMB_NAMES = (
    ("Neck", "RShoulder"), ("Neck", "LShoulder"), ("RShoulder", "RElbow"), ("RElbow", "RWrist"),
    ("LShoulder", "LElbow"), ("LElbow", "LWrist"), ("Neck", "RHip"), ("RHip", "RKnee"),
    ("RKnee", "RAnkle"), ("Neck", "LHip"), ("LHip", "LKnee"), ("LKnee", "LAnkle"),
    ("Neck", "Nose"), ("Nose", "REye"), ("REye", "REar"), ("Nose", "LEye"), ("LEye", "LEar"),
)
LIMBS: tuple[tuple[int, int, tuple[int, int, int]], ...] = tuple(
    (_J[a], _J[b], COLORS[i]) for i, (a, b) in enumerate(_LIMB_NAMES)
)
LIMB_BRIGHTNESS = 0.6

# BODY_25 index of each of our 18 joints (BODY_25 adds MidHip at 8 and six foot points).
_BODY25_TO_18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

Joint = tuple[float, float, float]  # (x, y, confidence) in pixels


@dataclass(frozen=True)
class Pose:
    """People's body joints on a canvas: ``people[p][j] == (x, y, confidence)`` in pixels."""

    width: int
    height: int
    people: tuple[tuple[Joint, ...], ...]

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"a pose canvas must be at least 1x1 pixels, got {self.width}x{self.height}")
        people = tuple(tuple((float(x), float(y), float(c)) for x, y, c in p) for p in self.people)
        for i, person in enumerate(people):
            if len(person) != len(JOINTS):
                raise ValueError(f"person {i + 1} has {len(person)} joints; a pose needs {len(JOINTS)}")
        object.__setattr__(self, "people", people)

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


# ----------------------------------------------------------------------------- edges
def _rgb_array(image: Image.Image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"))


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edge map of ``image`` (white edges on black, RGB, same size)."""
    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    edges = cv2.Canny(cv2.cvtColor(_rgb_array(image), cv2.COLOR_RGB2GRAY), low, high)
    return Image.fromarray(edges).convert("RGB")


def scribble_from_edges(image: Image.Image) -> Image.Image:
    """A scribble (thick white strokes on black, RGB, same size) made with OpenCV alone.

    The fallback when HED/PiDiNet weights are absent: smooth away texture, find Canny edges
    with thresholds set from the median brightness, thicken them, and drop specks.
    """
    gray = cv2.cvtColor(_rgb_array(image), cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    s = max(h, w) / 512.0  # kernel sizes scale with the image
    gray = cv2.bilateralFilter(gray, 9, 60, 60)
    gray = cv2.GaussianBlur(gray, (0, 0), max(1.0, 1.5 * s))
    median = float(np.median(gray))
    edges = cv2.Canny(gray, int(max(10, 0.66 * median)), int(min(255, max(40, 1.33 * median))))
    k = max(3, int(round(5 * s)) | 1)  # stroke width ~5 px at 512 px
    edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats((edges > 0).astype(np.uint8), 8)
    min_area = max(30, int(0.0004 * h * w))
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    out = np.where(keep[labels], 255, 0).astype(np.uint8)
    return Image.fromarray(out).convert("RGB")


def scribble_changed(a: Image.Image, b: Image.Image, min_fraction: float = 5e-4) -> bool:
    """True when more than ``min_fraction`` of the pixels differ between two scribbles."""
    if a.size != b.size:
        raise ValueError(f"the edited scribble is {b.size[0]}x{b.size[1]} but the original is "
                         f"{a.size[0]}x{a.size[1]}; they must have the same size")
    ma = np.asarray(a.convert("L")) > 127
    mb = np.asarray(b.convert("L")) > 127
    return float(np.mean(ma != mb)) > min_fraction


# ----------------------------------------------------------------------------- annotators
@dataclass
class Annotators:
    """controlnet-aux detectors that loaded (None where their weights are missing)."""

    hed: Any = None
    openpose: Any = None
    errors: dict[str, str] | None = None


def load_annotators(source: str = "lllyasviel/Annotators", device: Any = None, dtype: Any = None,
                    which: Sequence[str] = ("hed", "openpose")) -> Annotators:
    """Load HED (or PiDiNet, ``"pidinet"``) and OpenPose from a hub id or a local folder.

    ``device`` and ``dtype`` are accepted (and unused: the detectors run where controlnet-aux
    puts them) so that ModelCache can call this as its ``loader(source, device, dtype)``.

    Never raises for missing weights: a detector that cannot load is None and its reason is
    in ``errors`` so the caller can say which fallback it uses. Set ``HF_HUB_OFFLINE=1``
    when there is no network, or each hub attempt retries for a while.
    """
    import os

    out = Annotators(errors={})
    for name in which:
        try:
            if name in ("hed", "pidinet"):
                from controlnet_aux import HEDdetector, PidiNetDetector

                out.hed = (HEDdetector if name == "hed" else PidiNetDetector).from_pretrained(source)
            elif name == "openpose":
                from controlnet_aux import OpenposeDetector

                body = os.path.join(source, "body_pose_model.pth")
                if os.path.isdir(source) and not os.path.exists(os.path.join(source, "hand_pose_model.pth")):
                    from controlnet_aux.open_pose.body import Body  # body-only folder

                    out.openpose = OpenposeDetector(Body(body))
                else:
                    out.openpose = OpenposeDetector.from_pretrained(source)
            else:
                raise ValueError(f"unknown annotator {name!r}; use 'hed', 'pidinet' or 'openpose'")
        except ValueError:
            raise
        except Exception as exc:  # missing file, no network, bad checkpoint
            out.errors[name] = f"{type(exc).__name__}: {exc}"
    return out


def scribble_with_hed(detector: Any, image: Image.Image, detect_resolution: int = 512) -> Image.Image:
    """Scribble of ``image`` from a controlnet-aux HED or PiDiNet detector, same size, 0/255."""
    w, h = image.size
    result = detector(image.convert("RGB"), detect_resolution=detect_resolution,
                      image_resolution=min(w, h), scribble=True)
    arr = np.asarray(result.convert("L").resize((w, h), Image.NEAREST))
    return Image.fromarray(np.where(arr > 127, 255, 0).astype(np.uint8)).convert("RGB")


def detect_pose(detector: Any, image: Image.Image, detect_resolution: int = 512) -> Pose | None:
    """Body keypoints of everyone in ``image`` from a controlnet-aux ``OpenposeDetector``.

    Uses ``detector.detect_poses`` (a list of ``PoseResult`` whose body keypoints are
    normalised to the detection image) and maps them to ``image``'s pixels; None if nobody.
    """
    w, h = image.size
    k = detect_resolution / min(w, h)
    rgb = _rgb_array(image)
    if abs(k - 1) > 1e-3:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    people = []
    for result in detector.detect_poses(rgb):
        joints = [
            (0.0, 0.0, 0.0) if kp is None else
            (float(kp.x) * w, float(kp.y) * h, float(getattr(kp, "score", 1.0) or 1.0))
            for kp in result.body.keypoints[: len(JOINTS)]
        ]
        if any(c > 0 for _, _, c in joints):
            people.append(tuple(joints))
    return Pose(w, h, tuple(people)) if people else None


# ----------------------------------------------------------------------------- pose JSON
def pose_to_json(pose: Pose) -> dict:
    """The OpenPose JSON dict of ``pose`` (pixel coordinates; 0, 0, 0 for a missing joint)."""
    people = []
    for person in pose.people:
        flat: list[float] = []
        for x, y, c in person:
            flat += [round(x, 2), round(y, 2), round(c, 3)] if c > 0 else [0, 0, 0]
        people.append({"pose_keypoints_2d": flat})
    return {"canvas_width": pose.width, "canvas_height": pose.height, "people": people}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}, not a finite number")
    return float(value)


def pose_from_json(data: Any, expect_size: tuple[int, int] | None = None) -> Pose:
    """Read and check an OpenPose JSON (a dict, a one-element list of dicts, or a JSON string).

    ``expect_size`` = (width, height) of the image the pose must fit: a pose for a canvas of
    the same aspect ratio (within 2 %) is scaled to it, another aspect ratio is an error; the
    canvas keys may then be omitted. Raises ``ValueError`` with a readable message.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the pose file is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError("a pose must be a JSON object with canvas_width, canvas_height and people")
    if "people" not in data:
        raise ValueError("the pose JSON has no 'people' list")
    if expect_size is None or "canvas_width" in data or "canvas_height" in data:
        for key in ("canvas_width", "canvas_height"):
            if key not in data:
                raise ValueError(f"the pose JSON has no '{key}'")
        width, height = (_number(data[k], k) for k in ("canvas_width", "canvas_height"))
        if width < 1 or height < 1 or width != int(width) or height != int(height):
            raise ValueError(f"the canvas size must be whole pixels >= 1, got {width}x{height}")
        width, height = int(width), int(height)
    else:
        width, height = expect_size
    if not isinstance(data["people"], list):
        raise ValueError("'people' must be a list")

    people = []
    for p, person in enumerate(data["people"], start=1):
        if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
            raise ValueError(f"person {p} has no 'pose_keypoints_2d'")
        flat = person["pose_keypoints_2d"]
        if not isinstance(flat, list) or len(flat) not in (3 * 18, 3 * 25):
            n = len(flat) if isinstance(flat, list) else "no list of"
            raise ValueError(f"person {p} has {n} keypoint numbers; expected 54 (18 joints x (x, y, confidence))")
        nums = [_number(v, f"keypoint number {i + 1} of person {p}") for i, v in enumerate(flat)]
        triples = [tuple(nums[i:i + 3]) for i in range(0, len(nums), 3)]
        if len(triples) == 25:
            triples = [triples[i] for i in _BODY25_TO_18]
        people.append([(x, y, c) if c > 0 else (0.0, 0.0, 0.0) for x, y, c in triples])

    present = [(x, y) for person in people for x, y, c in person if c > 0]
    if not present:
        raise ValueError("the pose has no person with any joint (all confidences are 0)")
    if all(x <= 1 and y <= 1 for x, y in present):  # normalised coordinates
        people = [[(x * width, y * height, c) for x, y, c in person] for person in people]
    for p, person in enumerate(people, start=1):
        for j, (x, y, c) in enumerate(person):
            if c > 0 and not (0 <= x <= width and 0 <= y <= height):
                raise ValueError(f"joint {JOINTS[j]} of person {p} is at ({x:g}, {y:g}), "
                                 f"outside the {width}x{height} canvas")
    people = [person for person in people if any(c > 0 for _, _, c in person)]
    pose = Pose(width, height, tuple(tuple(person) for person in people))

    if expect_size is not None and (width, height) != tuple(expect_size):
        ew, eh = expect_size
        if abs((width / height) / (ew / eh) - 1) > 0.02:
            raise ValueError(f"the pose is for a {width}x{height} canvas but the image is {ew}x{eh}; "
                             "their shapes differ")
        pose = scale_pose(pose, ew, eh)
    return pose


# ----------------------------------------------------------------------------- geometry
def scale_pose(pose: Pose, w: int, h: int) -> Pose:
    """The same pose on a ``w`` x ``h`` canvas (coordinates scaled per axis)."""
    sx, sy = w / pose.width, h / pose.height
    return Pose(w, h, tuple(tuple((x * sx, y * sy, c) for x, y, c in person) for person in pose.people))


# A standing person facing the camera, in units of body height, x relative to the centre
# (the person's right side is on the image's left).
_DEFAULT_BODY = (
    (0, 0.09), (0, 0.2), (-0.11, 0.2), (-0.15, 0.36), (-0.17, 0.5), (0.11, 0.2), (0.15, 0.36),
    (0.17, 0.5), (-0.07, 0.52), (-0.08, 0.73), (-0.08, 0.94), (0.07, 0.52), (0.08, 0.73),
    (0.08, 0.94), (-0.025, 0.07), (0.025, 0.07), (-0.055, 0.085), (0.055, 0.085),
)


def default_pose(w: int, h: int) -> Pose:
    """A standing person centred on a ``w`` x ``h`` canvas, for when no detector is available."""
    scale = min(0.8 * h, 0.8 * w / 0.4)
    top = h / 2 - 0.5 * scale
    person = tuple((w / 2 + dx * scale, top + dy * scale, 1.0) for dx, dy in _DEFAULT_BODY)
    return Pose(w, h, (person,))


def pose_changed(a: Pose, b: Pose, tol_px: float = 2.0) -> bool:
    """True when a joint appeared, vanished or moved by more than ``tol_px`` (in ``a``'s pixels)."""
    if b.size != a.size:
        b = scale_pose(b, a.width, a.height)
    if len(a.people) != len(b.people):
        return True
    for pa, pb in zip(a.people, b.people):
        for (xa, ya, ca), (xb, yb, cb) in zip(pa, pb):
            if (ca > 0) != (cb > 0):
                return True
            if ca > 0 and math.hypot(xa - xb, ya - yb) > tol_px:
                return True
    return False


# ----------------------------------------------------------------------------- rendering
def render_openpose(pose: Pose, size: tuple[int, int] | None = None) -> Image.Image:
    """The OpenPose image of ``pose``: limbs as coloured ellipses, joints as dots, on black.

    ``size`` = (width, height) scales the pose first. Stick width is 4 px on a 512 px canvas
    and scales with the shorter side. A missing joint drops every limb that touches it.
    """
    if size is not None:
        pose = scale_pose(pose, int(size[0]), int(size[1]))
    w, h = pose.size
    unit = min(w, h) / 512.0
    stick = max(1, round(4 * unit))
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    for person in pose.people:
        for a, b, color in LIMBS:
            (xa, ya, ca), (xb, yb, cb) = person[a], person[b]
            if ca <= 0 or cb <= 0:
                continue
            length = math.hypot(xb - xa, yb - ya)
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
            poly = cv2.ellipse2Poly(centre, (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, tuple(int(v * LIMB_BRIGHTNESS) for v in color))
        for j, (x, y, c) in enumerate(person):
            if c > 0:
                cv2.circle(canvas, (int(round(x)), int(round(y))), stick, COLORS[j], thickness=-1)
    return Image.fromarray(canvas)
