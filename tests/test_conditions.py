"""Layout conditions: OpenPose rendering, pose JSON, scribbles, change detection."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.core import conditions as C
from engine.core.conditions import JOINTS, LIMBS, Pose

J = {name: i for i, name in enumerate(JOINTS)}


def _photo(w: int = 256, h: int = 192) -> Image.Image:
    """A flat synthetic photo: a few shapes on a gradient, plus light noise."""
    x = np.linspace(60, 160, w)[None, :, None]
    arr = np.broadcast_to(x, (h, w, 3)).astype(np.float64)
    arr = arr + np.random.default_rng(0).normal(0, 3, arr.shape)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((30, 30, 110, 110), fill=(230, 200, 170))
    d.rectangle((140, 60, 220, 170), fill=(200, 40, 40))
    d.line((10, 180, 240, 150), fill=(20, 20, 20), width=3)
    return img


def _joint_xy(pose: Pose, name: str, person: int = 0) -> tuple[float, float]:
    x, y, _ = pose.people[person][J[name]]
    return x, y


def _drop(pose: Pose, name: str) -> Pose:
    person = list(pose.people[0])
    person[J[name]] = (0.0, 0.0, 0.0)
    return Pose(pose.width, pose.height, (tuple(person),))


def _limb_colour(a: str, b: str) -> tuple[int, int, int]:
    for ia, ib, colour in LIMBS:
        if (ia, ib) == (J[a], J[b]):
            return tuple(int(v * C.LIMB_BRIGHTNESS) for v in colour)
    raise KeyError((a, b))


# ----------------------------------------------------------------------------- tables
def test_tables_have_the_openpose_shape():
    assert len(JOINTS) == 18 and len(LIMBS) == 17 and len(C.COLORS) == 18
    assert len({(a, b) for a, b, _ in LIMBS}) == 17
    assert (J["Neck"], J["RShoulder"], (255, 0, 0)) == LIMBS[0]


# ----------------------------------------------------------------------------- rendering
def test_render_has_canvas_size_and_colours_on_limbs():
    pose = C.default_pose(512, 384)
    img = C.render_openpose(pose)
    assert img.mode == "RGB" and img.size == (512, 384)
    arr = np.asarray(img)
    assert arr[0, 0].tolist() == [0, 0, 0]
    for a, b, _ in LIMBS:
        (xa, ya), (xb, yb) = _joint_xy(pose, JOINTS[a]), _joint_xy(pose, JOINTS[b])
        mid = arr[int(round((ya + yb) / 2)), int(round((xa + xb) / 2))]
        assert mid.sum() > 0, f"limb {JOINTS[a]}-{JOINTS[b]} not drawn"
    x, y = _joint_xy(pose, "RKnee")  # midway along RKnee-RAnkle: that limb's colour
    x2, y2 = _joint_xy(pose, "RAnkle")
    got = arr[int(round((y + y2) / 2)), int(round((x + x2) / 2))]
    assert tuple(got.tolist()) == _limb_colour("RKnee", "RAnkle")


def test_render_size_argument_scales_the_pose():
    pose = C.default_pose(100, 200)
    img = C.render_openpose(pose, size=(300, 600))
    assert img.size == (300, 600)
    x, y = _joint_xy(pose, "Neck")
    assert np.asarray(img)[int(y * 3), int(x * 3)].sum() > 0


def test_missing_joint_drops_its_limbs():
    pose = C.default_pose(512, 512)
    full = np.asarray(C.render_openpose(pose))
    cut = np.asarray(C.render_openpose(_drop(pose, "RElbow")))
    for a, b in (("RShoulder", "RElbow"), ("RElbow", "RWrist")):
        (xa, ya), (xb, yb) = _joint_xy(pose, a), _joint_xy(pose, b)
        for t in (0.35, 0.5, 0.65):  # points along the limb, away from the joints' dots
            px, py = int(round(xa + t * (xb - xa))), int(round(ya + t * (yb - ya)))
            assert tuple(full[py, px].tolist()) == _limb_colour(a, b)
            assert cut[py, px].tolist() == [0, 0, 0], f"{a}-{b} still drawn at t={t}"
    x, y = _joint_xy(pose, "RWrist")  # the wrist itself is still there
    assert cut[int(round(y)), int(round(x))].sum() > 0
    x, y = _joint_xy(pose, "LElbow")  # other limbs untouched
    assert cut[int(round(y)), int(round(x))].tolist() == full[int(round(y)), int(round(x))].tolist()


def test_default_pose_fits_any_canvas():
    for w, h in ((512, 512), (1024, 256), (200, 900), (64, 64)):
        pose = C.default_pose(w, h)
        assert pose.size == (w, h) and len(pose.people) == 1
        for x, y, c in pose.people[0]:
            assert c == 1 and 0 <= x <= w and 0 <= y <= h
        assert _joint_xy(pose, "RShoulder")[0] < _joint_xy(pose, "LShoulder")[0]  # facing the viewer


# ----------------------------------------------------------------------------- JSON
def test_json_round_trip():
    pose = _drop(C.default_pose(640, 480), "LEar")
    data = json.loads(json.dumps(C.pose_to_json(pose)))
    assert data["canvas_width"] == 640 and data["canvas_height"] == 480
    assert len(data["people"][0]["pose_keypoints_2d"]) == 54
    back = C.pose_from_json(data)
    assert back.size == pose.size
    for (xa, ya, ca), (xb, yb, cb) in zip(pose.people[0], back.people[0]):
        assert (ca > 0) == (cb > 0)
        assert math.hypot(xa - xb, ya - yb) < 0.01
    assert not C.pose_changed(pose, back)
    assert C.pose_from_json(json.dumps(data)) == back  # a JSON string works too
    assert C.pose_from_json([data]) == back  # and a one-frame list


def _json(flat=None, w=512, h=512, **extra):
    flat = flat if flat is not None else C.pose_to_json(C.default_pose(w, h))["people"][0]["pose_keypoints_2d"]
    return {"canvas_width": w, "canvas_height": h, "people": [{"pose_keypoints_2d": flat}], **extra}


def _outside():
    data = _json()
    flat = data["people"][0]["pose_keypoints_2d"]
    flat[3 * J["RWrist"]: 3 * J["RWrist"] + 3] = [600, 20, 1]
    return data


@pytest.mark.parametrize("data, message", [
    ("[1, 2", "not valid JSON"),
    (42, "JSON object"),
    ([], "JSON object"),
    ({"canvas_width": 512, "canvas_height": 512}, "no 'people'"),
    ({"canvas_height": 512, "people": []}, "no 'canvas_width'"),
    ({"canvas_width": 512, "canvas_height": 0, "people": []}, "whole pixels"),
    ({"canvas_width": "wide", "canvas_height": 5, "people": []}, "must be a number"),
    ({"canvas_width": 512, "canvas_height": 512, "people": {}}, "must be a list"),
    ({"canvas_width": 512, "canvas_height": 512, "people": [{"x": 1}]}, "person 1 has no 'pose_keypoints_2d'"),
    (_json([1.0] * 53), "53 keypoint numbers; expected 54"),
    (_json([1.0] * 54 + [2.0]), "55 keypoint numbers"),
    (_json([float("nan")] * 54), "not a finite number"),
    (_json(["a"] * 54), "must be a number"),
    (_outside(), "joint RWrist of person 1 is at (600, 20), outside the 512x512 canvas"),
    (_json([0] * 54), "no person with any joint"),
    ({"canvas_width": 512, "canvas_height": 512, "people": []}, "no person with any joint"),
])
def test_bad_json_is_a_readable_value_error(data, message):
    with pytest.raises(ValueError) as err:
        C.pose_from_json(data)
    assert message in str(err.value)


def test_nan_from_a_json_text_is_rejected():
    data = _json()
    data["people"][0]["pose_keypoints_2d"][0] = float("nan")
    text = json.dumps(data)  # Python writes the NaN literal, as some tools do
    assert "NaN" in text
    with pytest.raises(ValueError, match="finite"):
        C.pose_from_json(text)


def test_normalised_coordinates_are_scaled_to_the_canvas():
    flat = [0.0] * 54
    flat[3 * J["Neck"]: 3 * J["Neck"] + 3] = [0.5, 0.25, 0.9]
    flat[3 * J["Nose"]: 3 * J["Nose"] + 3] = [0.5, 0.1, 0.8]
    pose = C.pose_from_json(_json(flat, w=400, h=200))
    assert pose.people[0][J["Neck"]] == (200.0, 50.0, 0.9)
    assert pose.people[0][J["Nose"]] == (200.0, 20.0, 0.8)
    assert pose.people[0][J["RWrist"]][2] == 0


def test_body25_is_mapped_to_18_joints():
    body18 = C.pose_to_json(C.default_pose(512, 512))["people"][0]["pose_keypoints_2d"]
    triples = [body18[i:i + 3] for i in range(0, 54, 3)]
    body25 = triples[:8] + [[256, 300, 1]] + triples[8:] + [[0, 0, 0]] * 6
    pose = C.pose_from_json(_json(sum(body25, [])))
    assert not C.pose_changed(pose, C.default_pose(512, 512), tol_px=0.1)


def test_expect_size_scales_or_rejects():
    data = C.pose_to_json(C.default_pose(256, 128))
    pose = C.pose_from_json(data, expect_size=(512, 256))
    assert pose.size == (512, 256)
    assert not C.pose_changed(pose, C.default_pose(512, 256), tol_px=0.1)
    with pytest.raises(ValueError, match="256x128 canvas but the image is 300x300"):
        C.pose_from_json(data, expect_size=(300, 300))
    flat = [0.5, 0.5, 1] + [0] * 51  # normalised, no canvas keys: the expected size is used
    pose = C.pose_from_json({"people": [{"pose_keypoints_2d": flat}]}, expect_size=(100, 80))
    assert pose.people[0][0] == (50.0, 40.0, 1.0)


def test_scale_pose():
    pose = C.default_pose(200, 100)
    big = C.scale_pose(pose, 400, 300)
    assert big.size == (400, 300)
    for (xa, ya, ca), (xb, yb, cb) in zip(pose.people[0], big.people[0]):
        assert (xb, yb, cb) == pytest.approx((xa * 2, ya * 3, ca))
    assert not C.pose_changed(pose, big)  # pose_changed compares on a's canvas


def test_pose_changed():
    pose = C.default_pose(512, 512)
    person = [list(j) for j in pose.people[0]]
    person[J["LWrist"]][0] += 1.5
    assert not C.pose_changed(pose, Pose(512, 512, (person,)))
    person[J["LWrist"]][0] += 5
    assert C.pose_changed(pose, Pose(512, 512, (person,)))
    assert C.pose_changed(pose, _drop(pose, "Nose"))
    assert C.pose_changed(pose, Pose(512, 512, pose.people * 2))


def test_pose_rejects_wrong_joint_count():
    with pytest.raises(ValueError, match="17 joints"):
        Pose(10, 10, ([(0, 0, 0)] * 17,))


# ----------------------------------------------------------------------------- edges and scribbles
def test_canny():
    img = C.canny(_photo())
    assert img.mode == "RGB" and img.size == (256, 192)
    assert set(np.unique(np.asarray(img)).tolist()) <= {0, 255}
    with pytest.raises(ValueError, match="low <= high"):
        C.canny(_photo(), 200, 100)


def test_scribble_fallback_is_white_strokes_on_black():
    photo = _photo(320, 240)
    scribble = C.scribble_from_edges(photo)
    arr = np.asarray(scribble)
    assert scribble.mode == "RGB" and scribble.size == photo.size
    assert set(np.unique(arr).tolist()) <= {0, 255}
    white = arr[..., 0] > 0
    assert 0.005 < white.mean() < 0.3  # strokes, not noise or a filled image
    assert (arr[..., 0] == arr[..., 1]).all()
    # No specks: every stroke is a sizeable connected piece; flat areas stay black.
    count, _, stats, _ = cv2.connectedComponentsWithStats(white.astype(np.uint8), connectivity=8)
    assert count > 1 and stats[1:, cv2.CC_STAT_AREA].min() >= 30
    assert white[100:140, 160:200].mean() < 0.2


def test_scribble_changed():
    base = C.scribble_from_edges(_photo())
    assert not C.scribble_changed(base, base.copy())
    edited = base.copy()
    ImageDraw.Draw(edited).line((20, 20, 120, 40), fill=(255, 255, 255), width=5)
    assert C.scribble_changed(base, edited)
    speck = base.copy()
    speck.putpixel((5, 5), (255, 255, 255) if speck.getpixel((5, 5))[0] == 0 else (0, 0, 0))
    assert not C.scribble_changed(base, speck)  # one pixel is below the threshold
    with pytest.raises(ValueError, match="same size"):
        C.scribble_changed(base, base.resize((100, 100)))


# ----------------------------------------------------------------------------- annotators
def test_detect_pose_maps_keypoints_to_pixels():
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    class FakeDetector:  # detect_poses returns keypoints normalised to the image it saw
        def __init__(self, results):
            self.results, self.seen = results, None

        def detect_poses(self, rgb):
            self.seen = rgb.shape
            return self.results

    kps = [None] * 18
    kps[J["Neck"]] = Keypoint(0.5, 0.25)
    kps[J["Nose"]] = Keypoint(0.5, 0.1)
    det = FakeDetector([PoseResult(BodyResult(kps, 2.0, 2), None, None, None)])
    pose = C.detect_pose(det, _photo(400, 200))
    assert det.seen == (512, 1024, 3)  # shorter side brought to 512
    assert pose.size == (400, 200)
    assert pose.people[0][J["Neck"]] == (200.0, 50.0, 1.0)
    assert pose.people[0][J["RWrist"]] == (0.0, 0.0, 0.0)
    assert C.detect_pose(FakeDetector([]), _photo()) is None


def test_load_annotators_reports_missing_weights(tmp_path):
    found = C.load_annotators(str(tmp_path))
    assert found.hed is None and found.openpose is None
    assert set(found.errors) == {"hed", "openpose"}
    with pytest.raises(ValueError, match="unknown annotator"):
        C.load_annotators(str(tmp_path), which=("depth",))


def test_hed_scribble_from_a_local_folder(tmp_path):
    """The real loading path, offline: random HED weights saved where from_pretrained looks."""
    import torch
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    found = C.load_annotators(str(tmp_path), which=("hed",))
    assert found.hed is not None, found.errors
    scribble = C.scribble_with_hed(found.hed, _photo(120, 90), detect_resolution=128)
    assert scribble.size == (120, 90) and scribble.mode == "RGB"
    assert set(np.unique(np.asarray(scribble)).tolist()) <= {0, 255}
