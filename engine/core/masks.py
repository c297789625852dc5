"""Region masks: pure operations on float32 numpy arrays of shape (H, W) with values in [0, 1].

A mask value of 1 means "edit here", 0 means "keep". Binary masks (only 0 and 1) stay binary
through every operation here except `feather`, which is the one place soft edges are made, and
`to_latent`, whose cells hold the mean of the pixels they cover.

Conventions
- Sizes follow PIL: `size` is (width, height); arrays are (height, width).
- Functions never change their argument; they return a new array.
- Bad input (wrong shape, another aspect ratio than the photo) raises `ValueError` with a
  message a user can act on.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MaskLike = Union[np.ndarray, torch.Tensor, Image.Image]

# A pixel counts as "in the mask" for `is_empty` when it would be visible in an 8-bit PNG.
_VISIBLE = 0.5 / 255.0
# Gaussian tails smaller than this are snapped to exactly 0 or 1, so feathering changes only
# the pixels near an edge (float rounding would otherwise leave 0.99999994 far from edges).
_SNAP = 1e-4


# -- conversion -------------------------------------------------------------------------

def as_mask(mask: MaskLike) -> np.ndarray:
    """Return `mask` as a new float32 (H, W) array in [0, 1].

    Accepts bool arrays, uint8 arrays (0..255), float arrays (clipped to [0, 1]), torch
    tensors of shape (H, W), (1, H, W) or (1, 1, H, W), and PIL images (via `mask_from_image`).
    """
    if isinstance(mask, Image.Image):
        return mask_from_image(mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu().numpy()
    arr = np.asarray(mask)
    # Drop leading singleton axes of batched tensors: (1, 1, H, W) -> (H, W).
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"a mask must be a 2-D array (height, width); got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def empty(size: tuple[int, int]) -> np.ndarray:
    """An all-zero mask for a photo of `size` = (width, height): nothing is edited."""
    w, h = size
    return np.zeros((h, w), np.float32)


def full(size: tuple[int, int]) -> np.ndarray:
    """An all-one mask for a photo of `size` = (width, height): the whole image is edited."""
    w, h = size
    return np.ones((h, w), np.float32)


def to_pil(mask: MaskLike) -> Image.Image:
    """The mask as an 8-bit grayscale PIL image (0 = keep, 255 = edit), e.g. for mask.png."""
    return Image.fromarray(np.round(as_mask(mask) * 255.0).astype(np.uint8))


def mask_from_image(image: Union[Image.Image, np.ndarray],
                    size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a drawn or uploaded mask into a float32 (H, W) array in [0, 1].

    - L (and 1, I, F) images: their gray level.
    - RGB: luminance.
    - RGBA / LA / P with transparency: the alpha channel when it is not all opaque (a brush
      layer), otherwise luminance (a black-and-white mask saved with an alpha channel).
    `size` is the photo's (width, height). A mask of the same aspect ratio is resized with
    nearest-neighbour sampling (so binary stays binary); another aspect ratio is a ValueError.
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"a mask must be an image or an array, not {type(image).__name__}")
    arr = _mask_values(image)
    if size is not None:
        arr = _fit_to_size(arr, size)
    return arr


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """uint8/bool/float arrays (H, W), (H, W, 3) or (H, W, 4) -> PIL image."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.round(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        return Image.fromarray(arr)
    raise ValueError(f"a mask array must be (H, W), (H, W, 3) or (H, W, 4); got {arr.shape}")


def _mask_values(image: Image.Image) -> np.ndarray:
    """The mask values of a PIL image, by the mode rules in `mask_from_image`."""
    if image.mode in ("I", "I;16", "F"):
        # Integer and float gray images: 16-bit, 8-bit or [0, 1] ranges, judged by the maximum.
        arr = np.asarray(image, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        scale = 65535.0 if peak > 255.0 else (255.0 if peak > 1.0 else 1.0)
        return np.clip(arr / scale, 0.0, 1.0)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:  # a real alpha layer: the brush strokes
            return alpha.astype(np.float32) / 255.0
        image = rgba.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _fit_to_size(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (nearest) to `size` = (width, height) when the aspect ratio matches, else raise."""
    pw, ph = int(size[0]), int(size[1])
    mh, mw = arr.shape
    if (mw, mh) == (pw, ph):
        return arr
    # Same aspect ratio up to rounding: either the photo is this mask's size after the intake's
    # resize (longest side, multiples of 8), or the ratios agree within 2%.
    from engine.core.image import fit_size

    same_photo = fit_size(mw, mh, max(pw, ph)) == (pw, ph)
    if not same_photo and abs(mw * ph - mh * pw) > 0.02 * mh * ph:
        raise ValueError(f"mask is {mw}x{mh} but the photo is {pw}x{ph}; "
                         "draw the mask on this photo or upload one of the same size")
    return cv2.resize(arr, (pw, ph), interpolation=cv2.INTER_NEAREST)


# -- combining and thresholding ---------------------------------------------------------

def union(masks: Iterable[MaskLike]) -> np.ndarray:
    """Pixel-wise maximum of several masks of the same shape (the union for binary masks)."""
    arrays = [as_mask(m) for m in masks]
    if not arrays:
        raise ValueError("union of no masks: give at least one mask")
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"cannot combine masks of shapes {shape} and {a.shape}")
    return np.maximum.reduce(arrays).astype(np.float32)


def intersect(masks: Iterable[MaskLike]) -> np.ndarray:
    """Pixel-wise minimum of several masks of the same shape (the intersection)."""
    return 1.0 - union(invert(m) for m in masks)


def invert(mask: MaskLike) -> np.ndarray:
    """1 - mask: edit what was kept and keep what was edited."""
    return (1.0 - as_mask(mask)).astype(np.float32)


def binarize(mask: MaskLike, thr: float = 0.5) -> np.ndarray:
    """1 where mask >= thr, else 0 (float32)."""
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"mask threshold must be between 0 and 1, got {thr}")
    return (as_mask(mask) >= thr).astype(np.float32)


def is_empty(mask: MaskLike) -> bool:
    """True when no pixel would be visible in the 8-bit mask (nothing to edit)."""
    return not bool(np.any(as_mask(mask) > _VISIBLE))


def is_full(mask: MaskLike) -> bool:
    """True when every pixel is (visibly) in the mask: the whole image is edited."""
    return not bool(np.any(as_mask(mask) < 1.0 - _VISIBLE))


def coverage(mask: MaskLike) -> float:
    """Fraction of the photo the mask covers, in [0, 1] (soft values count partially)."""
    arr = as_mask(mask)
    return float(arr.mean()) if arr.size else 0.0


# -- morphology and soft edges ------------------------------------------------------------

def _ellipse(px: int) -> np.ndarray:
    """Elliptical (disc) structuring element of radius px."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def dilate(mask: MaskLike, px: int) -> np.ndarray:
    """Grow the mask outwards by `px` pixels (disc kernel). Soft masks: a max filter."""
    px = _pixels(px, "grow")
    arr = as_mask(mask)
    if px == 0 or arr.size == 0:
        return arr
    # OpenCV's default border for dilation never adds mask from outside the image.
    return cv2.dilate(arr, _ellipse(px))


def erode(mask: MaskLike, px: int) -> np.ndarray:
    """Shrink the mask inwards by `px` pixels (disc kernel). Soft masks: a min filter."""
    px = _pixels(px, "shrink")
    arr = as_mask(mask)
    if px == 0 or arr.size == 0:
        return arr
    # The default border for erosion counts outside pixels as "in", so a mask touching the
    # image edge does not shrink away from it (and a full mask stays full).
    return cv2.erode(arr, _ellipse(px))


def grow(mask: MaskLike, px: int) -> np.ndarray:
    """Dilate by px > 0, erode by px < 0, copy for 0 (the UI's single grow/shrink slider)."""
    px = int(px)
    return dilate(mask, px) if px >= 0 else erode(mask, -px)


def feather(mask: MaskLike, px: int) -> np.ndarray:
    """Soften the edge over about `px` pixels on each side with a Gaussian blur.

    The kernel spans 2*px+1 pixels (sigma = px/2), so only pixels within px of an edge take
    values strictly between 0 and 1; the rest keep their exact 0 or 1.
    """
    px = _pixels(px, "feather")
    arr = as_mask(mask)
    if px == 0 or arr.size == 0:
        return arr
    k = 2 * px + 1
    soft = cv2.GaussianBlur(arr, (k, k), sigmaX=px / 2.0, sigmaY=px / 2.0,
                            borderType=cv2.BORDER_REPLICATE)
    soft = np.clip(soft, 0.0, 1.0)
    soft[soft < _SNAP] = 0.0
    soft[soft > 1.0 - _SNAP] = 1.0
    return soft.astype(np.float32)


def _pixels(px, what: str) -> int:
    """Validate a pixel count for a morphology operation."""
    if isinstance(px, float) and not px.is_integer():
        raise ValueError(f"{what} needs a whole number of pixels, got {px}")
    px = int(px)
    if px < 0:
        raise ValueError(f"{what} by a negative number of pixels ({px}); use grow() to shrink")
    return px


# -- latent space and previews ------------------------------------------------------------

def to_latent(mask: MaskLike, h: int, w: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Resize to the latent grid by area averaging: a (1, 1, h, w) tensor in [0, 1].

    Each latent cell holds the mean of the photo pixels it covers; callers that need a hard
    latent mask threshold it (a cell is "inside" when its mean is >= 0.5).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"latent size must be positive, got {h}x{w}")
    t = torch.from_numpy(as_mask(mask))[None, None]
    t = F.interpolate(t, size=(int(h), int(w)), mode="area")
    return t.clamp_(0.0, 1.0).to(device=device, dtype=dtype)


def overlay(photo: Image.Image, mask: MaskLike, color: Sequence[int] = (255, 64, 64),
            alpha: float = 0.5, outline: bool = True) -> Image.Image:
    """The photo with the mask tinted in `color` (strength alpha * mask) and its outline drawn."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be between 0 and 1, got {alpha}")
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)
    m = mask_from_image(mask, photo.size) if isinstance(mask, Image.Image) else as_mask(mask)
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but the photo is "
                         f"{photo.width}x{photo.height}")
    tint = np.asarray(color, dtype=np.float32).reshape(1, 1, 3)
    weight = (alpha * m)[..., None]
    out = rgb * (1.0 - weight) + tint * weight
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if outline and not is_empty(m):
        # Draw the boundary of the binarised mask so thin or faint regions stay visible.
        contours, _ = cv2.findContours((m >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1)
    return Image.fromarray(out)
