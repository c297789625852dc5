"""Inputs of the ITO method (papers/ito.txt, Sec. 3): the original condition C_0 and the edit
condition C_EDIT, read, checked and turned into what the ControlNets take.

- Text: the photo's caption (BLIP when the user gives none) for C_0, the edit prompt for C_EDIT.
- Scribble: white strokes on black. The photo's own scribble comes from HED (real annotator
  weights) or, without them (the tiny profile), from `conditions.scribble_from_edges`.
- Pose: 18 OpenPose joints (`conditions.Pose`); the photo's pose comes from controlnet-aux's
  OpenPose detector (real weights) or, without them, `conditions.default_pose`.

Also the two pictures the UI needs for the scribble canvas (a faded copy of the photo and an
RGBA layer holding the strokes) and a small picture of a condition for the intermediates.
Nothing here imports Gradio.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from engine.core import conditions as K
from engine.core.image import fit_size, image_hash
from engine.core.masks import mask_from_image

STROKE_RGB = (30, 64, 255)   # colour of the strokes on the UI's scribble canvas
FADE = 0.35                  # how much of the photo shows under the strokes


# -- size checks -----------------------------------------------------------------------------------
def _fits(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """True for the target size itself, a size the intake would shrink to it, or the same shape (2 %)."""
    (w, h), (tw, th) = size, target
    if (w, h) == (tw, th) or fit_size(w, h, max(tw, th)) == (tw, th):
        return True
    return abs((w / h) / (tw / th) - 1.0) <= 0.02


def read_scribble(value: Any, size: tuple[int, int], what: str = "scribble") -> Image.Image:
    """A user's scribble as a binary RGB image (white strokes on black) of `size` = (w, h).

    Accepts white-on-black images (RGB/L) and RGBA stroke layers (alpha = stroke), of the
    photo's size or the same shape at another scale; another shape is a ValueError.
    """
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    if not isinstance(value, Image.Image):
        raise ValueError(f"the {what} must be an image, got {type(value).__name__}")
    if not _fits(value.size, size):
        raise ValueError(f"the {what} is {value.width}x{value.height} but the photo is {size[0]}x{size[1]}; "
                         "draw it on this photo or give one of the same size")
    strokes = mask_from_image(value, value.size)
    if value.size != tuple(size):
        strokes = np.asarray(Image.fromarray((strokes * 255).astype(np.uint8)).resize(size, Image.BILINEAR),
                             dtype=np.float32) / 255.0
    return Image.fromarray(np.where(strokes >= 0.5, 255, 0).astype(np.uint8)).convert("RGB")


def read_pose(value: Any, size: tuple[int, int], what: str = "pose") -> K.Pose:
    """A Pose, an OpenPose JSON dict or a JSON string -> a checked Pose on the photo's canvas.

    Missing keypoint numbers, joints outside the canvas and another canvas shape are ValueErrors
    (`conditions.pose_from_json`); a canvas of the same shape is scaled to the photo.
    """
    if isinstance(value, K.Pose):
        value = K.pose_to_json(value)
    try:
        return K.pose_from_json(value, expect_size=tuple(size))
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


# -- the photo's own conditions ---------------------------------------------------------------------
def annotators(models):
    """controlnet-aux detectors of the sd15 profile, or (None, reason) when they cannot load."""
    if models.profile != "sd15":
        return None, f"no annotator weights in the {models.profile!r} profile"
    try:
        found = models.get("annotators")
    except Exception as exc:  # weights missing offline, broken loader
        return None, f"the annotators did not load ({type(exc).__name__}: {exc})"
    return found, None


def source_scribble(models, image: Image.Image) -> tuple[Image.Image, Optional[str]]:
    """The photo's scribble (HED with real weights) and a note when the edge fallback was used."""
    found, why = annotators(models)
    if found is not None and getattr(found, "hed", None) is not None:
        return K.scribble_with_hed(found.hed, image), None
    if found is not None and why is None:
        why = "HED weights are missing: " + str((found.errors or {}).get("hed", "not loaded"))
    return K.scribble_from_edges(image), f"{why}: the photo's scribble is the edge-based fallback (OpenCV)"


def source_pose(models, image: Image.Image) -> tuple[Optional[K.Pose], Optional[str], bool]:
    """(pose, note, detected): the detected pose (None when nobody is found), or the default
    standing skeleton with a note when no detector is available (detected = False)."""
    found, why = annotators(models)
    if found is not None and getattr(found, "openpose", None) is not None:
        return K.detect_pose(found.openpose, image), None, True
    if found is not None and why is None:
        why = "OpenPose weights are missing: " + str((found.errors or {}).get("openpose", "not loaded"))
    return K.default_pose(*image.size), f"{why}: the photo's pose is the default standing skeleton", False


_CAPTIONS: "OrderedDict[tuple, str]" = OrderedDict()
_CAPTION_LOCK = threading.Lock()


def photo_caption(models, image: Image.Image) -> str:
    """BLIP's caption of the photo (engine.core.caption), cached per photo and model."""
    from engine.core.caption import caption

    key = (image_hash(image), models.profile, models.source("blip"))
    with _CAPTION_LOCK:
        if key in _CAPTIONS:
            return _CAPTIONS[key]
    text = " ".join((caption(models.get("blip"), image) or "").split()) or "a photo"
    with _CAPTION_LOCK:
        _CAPTIONS[key] = text
        while len(_CAPTIONS) > 64:
            _CAPTIONS.popitem(last=False)
    return text


# -- to tensors and pictures -------------------------------------------------------------------------
def control_tensor(image: Image.Image, device, dtype) -> torch.Tensor:
    """A condition image as ControlNet takes it: (1, 3, H, W) in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(device, dtype)


def condition_picture(layouts: Sequence[Image.Image], text: str, size: tuple[int, int]) -> Image.Image:
    """One picture of a condition: its layout images overlaid (brightest wins) with the text below."""
    w, h = size
    canvas = np.zeros((h, w, 3), np.uint8)
    for img in layouts:
        canvas = np.maximum(canvas, np.asarray(img.convert("RGB").resize((w, h), Image.NEAREST)))
    band = 14 if h >= 96 else 0
    out = Image.new("RGB", (w, h + band), (0, 0, 0))
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    if band:
        draw.rectangle((0, h, w, h + band), fill=(40, 40, 40))
        label = text if len(text) * 6 <= w - 4 else text[: max(1, (w - 16) // 6)] + "..."
        draw.text((2, h + 1), label, fill=(255, 255, 255))
    if not layouts:  # text only: write the prompt large in the middle
        words, lines, line = text.split(), [], ""
        for word in words:
            if len(line) + len(word) + 1 > max(8, w // 7):
                lines.append(line)
                line = word
            else:
                line = (line + " " + word).strip()
        lines.append(line)
        for i, text_line in enumerate(lines[: max(1, h // 12)]):
            draw.text((4, 4 + 12 * i), text_line, fill=(255, 255, 255))
    return out


def faded_photo(image: Image.Image, fade: float = FADE) -> Image.Image:
    """The photo blended towards white, under the scribble strokes on the UI's canvas."""
    white = Image.new("RGB", image.size, (255, 255, 255))
    return Image.blend(white, image.convert("RGB"), fade)


def stroke_layer(scribble: Image.Image, color: tuple[int, int, int] = STROKE_RGB) -> Image.Image:
    """An RGBA layer with the scribble's strokes in `color`, transparent elsewhere."""
    strokes = np.asarray(scribble.convert("L")) > 127
    rgba = np.zeros(strokes.shape + (4,), np.uint8)
    rgba[strokes] = (*color, 255)
    return Image.fromarray(rgba, "RGBA")


def canvas_images(image: Image.Image, scribble: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(faded photo, stroke layer) for a scribble canvas over the photo."""
    background = faded_photo(image)
    return background, stroke_layer(scribble.resize(background.size, Image.NEAREST))


def pose_json_text(pose: K.Pose) -> str:
    return json.dumps(K.pose_to_json(pose))
