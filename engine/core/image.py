"""Image intake: whatever the user uploads becomes an RGB image of a size the models take.

- EXIF orientation is applied; RGBA/LA/P/L/CMYK/16-bit become 8-bit RGB (transparency over white).
- The longest side becomes `max_side` (default 512) and both sides a multiple of 8.
- Files that are not images, images under 64 px and decompression bombs are refused with a
  `ValueError` whose message a user can read.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64
MAX_PIXELS = 40_000_000  # a 40-megapixel photo is fine; more is refused before decoding
MAX_SIDE_LIMIT = 1024

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            source = np.clip(source, 0, 255).astype(np.uint8)
        return Image.fromarray(source)
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise ValueError(f"no image file at {source}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data)
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"the image is {img.width}x{img.height} pixels, more than the "
                                 f"{MAX_PIXELS // 1_000_000} megapixels this studio accepts")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("the image is too large to open safely (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ValueError("the file is not an image this studio can read (PNG, JPEG, WebP, ...)") from None
    except OSError as exc:  # truncated or corrupt data
        raise ValueError(f"the image file is damaged or truncated ({exc})") from None
    return img


def open_image(source: ImageSource) -> Image.Image:
    """Open and check that `source` is a readable image, without resizing (run() does the intake)."""
    if source is None:
        raise ValueError("no image was given: upload a photo first")
    return _open(source)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparent parts are composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray((array / top * 255).round().astype(np.uint8), "L")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_size(width: int, height: int, max_side: int = 512) -> tuple[int, int]:
    """Scale so the longest side is `max_side`, then round both sides to multiples of 8."""
    scale = max_side / max(width, height)
    w = max(8, int(round(width * scale / 8)) * 8)
    h = max(8, int(round(height * scale / 8)) * 8)
    return w, h


def load_image(source: ImageSource, max_side: int = 512) -> Image.Image:
    """Open, validate and normalise an input photo (see the module docstring)."""
    if source is None:
        raise ValueError("no image was given: upload a photo first")
    if not isinstance(max_side, int) or not MIN_SIDE <= max_side <= MAX_SIDE_LIMIT or max_side % 8:
        raise ValueError(f"resolution must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE_LIMIT}, got {max_side}")
    img = _open(source)
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"the image is {img.width}x{img.height} pixels, more than the "
                         f"{MAX_PIXELS // 1_000_000} megapixels this studio accepts")
    img = ImageOps.exif_transpose(img)
    if min(img.size) < MIN_SIDE:
        raise ValueError(f"the image is {img.width}x{img.height}; each side must be at least {MIN_SIDE} px")
    img = to_rgb(img)
    size = fit_size(img.width, img.height, max_side)
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def image_hash(img: Image.Image) -> str:
    """A content hash of a normalised image, for caches keyed by photo."""
    import hashlib

    h = hashlib.sha1(f"{img.size}{img.mode}".encode())
    h.update(img.tobytes())
    return h.hexdigest()
