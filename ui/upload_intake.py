"""What an upload to a mask editor must be: a photo the browser can open (the page script notes a
file it cannot decode, which never reaches Python), at least 64 px a side (smaller is refused), at
most 1024 px (larger is downscaled, with a note), and the key that tells the same photo again."""
from __future__ import annotations

from typing import Optional

from PIL import Image

from ui.mask_values import UPLOAD_MAX_SIDE

INTAKE_JS = """
() => {
  if (window.__desIntake) return;
  window.__desIntake = true;
  // A file the browser cannot decode never reaches Python (the editor silently stays empty):
  // note it on the editor and click the editor's hidden intake button, which Python answers with a warning.
  document.addEventListener('change', async (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'file' || !input.files) return;
    const host = input.closest('.mask-editor');
    const relay = host && host.querySelector('button.des-intake, .des-intake button');
    if (!relay) return;
    for (const file of Array.from(input.files)) {
      try {
        const bitmap = await createImageBitmap(file);
        bitmap.close();
      } catch (err) {
        host.dataset.desIntake = JSON.stringify({name: file.name, size: file.size, type: file.type});
        relay.click();
      }
    }
  }, true);
}
"""


def unreadable_message(report: str) -> str:
    """The intake box's report of a file the browser could not open -> one readable line."""
    import json

    try:
        name = str(json.loads(report).get("name") or "the file")
    except (ValueError, TypeError, AttributeError):
        name = "the file"
    return (f"'{name}' is not an image this studio can read (PNG, JPEG, WebP, GIF or BMP): nothing was "
            "loaded. Choose a photo file.")


def intake(photo: Image.Image) -> tuple[Optional[Image.Image], str]:
    """An uploaded photo -> (the photo to keep, a note), or (None, why it is refused).

    Too small (a side under engine.core.image.MIN_SIDE) is refused; larger than UPLOAD_MAX_SIDE on
    its longest side is downscaled (every method works at 512 px or less, and a 12-megapixel photo
    would make every preview and brush stroke take tens of seconds)."""
    from engine.core.image import MIN_SIDE

    w, h = photo.size
    if min(w, h) < MIN_SIDE:
        return None, (f"This photo is {w}x{h} pixels; each side must be at least {MIN_SIDE} px. "
                      "Upload a larger photo.")
    if max(w, h) > UPLOAD_MAX_SIDE:
        scale = UPLOAD_MAX_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return photo.resize(size, Image.Resampling.LANCZOS), (
            f"The photo was {w}x{h}; it was downscaled to {size[0]}x{size[1]} on upload "
            f"(every method works at {UPLOAD_MAX_SIDE} px or less).")
    return photo, ""


def photo_key(photo: Optional[Image.Image]) -> str:
    from engine.core.image import image_hash

    return "" if photo is None else image_hash(photo.convert("RGB"))
