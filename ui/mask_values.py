"""The mask editor's values, without Gradio events: what the ImageEditor sends (background, brush
layers, composite) read as (photo, mask), the grow / feather / invert / whole-image settings applied
(`resolve_mask`, the one function both the preview and every method use), the preview and its
status line, an editor value made from a mask, and the SAM click list's text form.

ui/mask_editor.py builds the component and wires its events on top of these.
"""
from __future__ import annotations

import argparse
import math
from typing import Optional

import gradio as gr
import numpy as np
from PIL import Image

from engine.core import masks as M

LAYER_ALPHA = 0.6      # opacity of the white mask paint, so the photo shows through it
ALPHA_THRESHOLD = 0.2  # a layer pixel is "in the mask" from this opacity up (brush edges below)
MAX_GROW = 256         # px, either way; the slider shows +-64
MAX_FEATHER = 256      # px; the slider shows 0..64
METHODS = ("Grounded-SAM", "CLIPSeg")
CLICK_MODES = ("object", "background")
ERROR_TITLE = "Please check the mask"
PHOTO_TITLE = "Please check the photo"
CANVAS_SIZE = (64, 64)  # the editor's empty canvas: what it sends as the "photo" when painted before an upload
UPLOAD_MAX_SIDE = 1024  # larger uploads are downscaled on arrival (every method works at 512 px or less)
UPLOAD_MIN_SIDE = 64    # engine.core.image.MIN_SIDE: smaller uploads are refused on arrival
PAINT_FIRST = ("Upload a photo first: the brush paints the region to edit on a photo, and there is no photo "
               "under these strokes.")
NOTHING_SELECTED = ("Nothing is selected: paint the region on the photo, select it by text, click it "
                    "on the preview, or tick 'Use the whole image'.")


# -- reading the editor -----------------------------------------------------------------------

def _as_pil(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, str):
        return Image.open(value)
    raise gr.Error("The photo could not be read; upload it again.", title=ERROR_TITLE, print_exception=False)


def _photo_rgb(image: Image.Image) -> Image.Image:
    """RGB photo; transparent pixels are put on white (as the editor shows them)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _layer_values(layer: Image.Image) -> np.ndarray:
    """A brush layer's mask values: its opacity (RGBA); a plain mask image's gray level."""
    if layer.mode in ("RGBA", "LA", "PA") or "transparency" in layer.info:
        return np.asarray(layer.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return M.mask_from_image(layer)


def _blank_canvas(image: Image.Image) -> bool:
    """The editor's own empty canvas (CANVAS_SIZE, one flat colour), which it sends as the
    background when the brush is used before any photo was uploaded."""
    if image.size != CANVAS_SIZE:
        return False
    extrema = image.convert("RGBA").getextrema()
    return all(lo == hi for lo, hi in extrema)


def read_editor(value) -> tuple[Optional[Image.Image], Optional[np.ndarray]]:
    """ImageEditor value -> (RGB photo or None, painted mask {0,1} float32 at photo size or None).

    The painted mask is the union of the layers' opacity above ALPHA_THRESHOLD; None when the
    editor holds no layer at all. A layer of another size than the photo is resized when its
    aspect ratio matches and refused with a readable gr.Error otherwise.
    """
    if value is None:
        return None, None
    if isinstance(value, (Image.Image, np.ndarray, str)):
        return _photo_rgb(_as_pil(value)), None
    if not isinstance(value, dict):
        raise gr.Error("The photo could not be read; upload it again.", title=ERROR_TITLE, print_exception=False)
    background = value.get("background")
    if background is None:
        background = value.get("composite")
    if background is None:
        return None, None
    background = _as_pil(background)
    if _blank_canvas(background):  # painted before any photo was uploaded
        if any(layer is not None and _layer_values(_as_pil(layer)).max() >= ALPHA_THRESHOLD
               for layer in value.get("layers") or []):
            raise gr.Error(PAINT_FIRST, title=PHOTO_TITLE, print_exception=False)
        return None, None
    photo = _photo_rgb(background)
    painted = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        values = _layer_values(_as_pil(layer))
        try:
            values = M.mask_from_image(values, photo.size)
        except ValueError as exc:
            raise gr.Error(f"The painted mask does not fit the photo: {exc}", title=ERROR_TITLE,
                           print_exception=False) from None
        layer_mask = (values >= ALPHA_THRESHOLD).astype(np.float32)
        painted = layer_mask if painted is None else np.maximum(painted, layer_mask)
    return photo, painted


def _pixels(value, name: str, lo: int, hi: int) -> int:
    """A slider value in whole pixels; the API may send anything, so check the range here."""
    if value is None:
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number of pixels, got {value!r}", title=ERROR_TITLE,
                       print_exception=False) from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise gr.Error(f"{name} must be between {lo} and {hi} px, got {value}", title=ERROR_TITLE,
                       print_exception=False)
    return int(round(number))


def resolve_mask(editor_value, grow_px=0, feather_px=0, invert=False, whole_image=False, *,
                 required: bool = False) -> tuple[Optional[Image.Image], Optional[Image.Image]]:
    """The (photo, mask) a method uses: the editor's layer, then invert, grow/shrink, feather.

    - no photo: (None, None), or gr.Error "Upload a photo first." when `required`;
    - whole_image: an all-white mask (the other settings do not apply);
    - otherwise the painted layer, inverted if asked, grown by grow_px (negative shrinks),
      feathered by feather_px: an L image, 255 = edit. Binary unless feathered;
    - nothing selected (empty after the settings): mask None, or gr.Error when `required`.
    Grow/shrink and feather act on the region that will be edited, i.e. after inverting.
    """
    grow_px = _pixels(grow_px, "Grow / shrink", -MAX_GROW, MAX_GROW)
    feather_px = _pixels(feather_px, "Feather", 0, MAX_FEATHER)
    photo, painted = read_editor(editor_value)
    if photo is None:
        if required:
            raise gr.Error("Upload a photo first.", title=ERROR_TITLE, print_exception=False)
        return None, None
    state = {"grow": grow_px, "feather": feather_px, "invert": bool(invert), "whole_image": bool(whole_image),
             "painted": None if painted is None or M.is_empty(painted) else M.to_pil(painted)}
    if whole_image:
        return photo, _with_state(Image.new("L", photo.size, 255), state)
    mask = painted if painted is not None else M.empty(photo.size)
    if invert:
        mask = M.invert(mask)
    mask = M.feather(M.grow(mask, grow_px), feather_px)
    if M.is_empty(mask):
        if required:
            raise gr.Error(NOTHING_SELECTED, title=ERROR_TITLE, print_exception=False)
        return photo, None
    return photo, _with_state(M.to_pil(mask), state)


def _with_state(mask: Image.Image, state: dict) -> Image.Image:
    """The mask, carrying the editor state it came from (engine.history.EDITOR_STATE) so a saved
    result restores the painted layer and the four settings, not only the mask they made."""
    from engine.history import EDITOR_STATE

    mask.info[EDITOR_STATE] = state
    return mask


def describe(photo: Optional[Image.Image], mask: Optional[Image.Image]) -> str:
    """One status line for the mask under the preview."""
    if photo is None:
        return "Upload a photo to select a region."
    if mask is None:
        return "Nothing selected yet: paint on the photo, select by text, or click the preview."
    if M.is_full(mask):
        return f"The whole photo ({photo.width}x{photo.height}) is selected."
    return f"The mask covers {100 * M.coverage(mask):.1f}% of the {photo.width}x{photo.height} photo."


def preview(editor_value, grow_px=0, feather_px=0, invert=False, whole_image=False):
    """(overlay image or None, status line) for the preview; a bad mask is reported, not raised."""
    try:
        photo, mask = resolve_mask(editor_value, grow_px, feather_px, invert, whole_image)
    except gr.Error as exc:
        return None, f"**{exc.message}**"
    if photo is None:
        return None, describe(None, None)
    shown = photo if mask is None else M.overlay(photo, mask)
    return shown, describe(photo, mask)


def editor_value(photo: Image.Image, mask: np.ndarray) -> dict:
    """An EditorValue whose single brush layer is `mask` (>= 0.5) painted in translucent white."""
    inside = M.as_mask(mask) >= 0.5
    layer = np.zeros((photo.height, photo.width, 4), np.uint8)
    layer[..., :3] = 255
    layer[..., 3] = np.where(inside, round(255 * LAYER_ALPHA), 0).astype(np.uint8)
    rgb = np.asarray(photo, dtype=np.float32)
    weight = (inside * LAYER_ALPHA)[..., None]
    composite = np.round(rgb * (1 - weight) + 255.0 * weight).astype(np.uint8)
    return {"background": photo, "layers": [Image.fromarray(layer, "RGBA")],
            "composite": Image.fromarray(composite, "RGB")}


def parse_clicks(text: str) -> list[tuple[float, float, bool]]:
    """"120,80,+ 40,30,-" (as `python -m engine segment --points`) -> [(x, y, positive)]."""
    from engine.segment_cli import parse_point

    try:
        return [parse_point(tok) for tok in (text or "").replace(";", " ").split()]
    except argparse.ArgumentTypeError as exc:
        raise gr.Error(str(exc), title=ERROR_TITLE, print_exception=False) from None


def format_click(x: float, y: float, positive: bool) -> str:
    return f"{int(round(x))},{int(round(y))},{'+' if positive else '-'}"
