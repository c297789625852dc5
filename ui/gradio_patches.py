"""A fix to Gradio 6.31 the studio needs with several users at once.

Gradio stores every output image in its cache under a folder named by the hash of the image's
bytes, and `processing_utils.save_pil_to_cache` rewrites that file (truncate, then write) each
time. Two requests that return the same image (the "before" photo of the same example, the same
mask) then race: one client downloads the file while the other request truncates it, and the
download fails ("peer closed connection", h11 "Too little data for declared Content-Length").
The soak benchmark hit it once in 200 requests. `atomic_image_cache()` replaces the function
with one that writes a new file under a temporary name and renames it into place, and leaves an
existing file alone (its name says its bytes), as Gradio already does for `save_file_to_cache`.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_image_cache() -> None:
    """Install the atomic `save_pil_to_cache` (once per process; idempotent)."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_atomic", False):
        return
    processing_utils.save_pil_to_cache = save_pil_to_cache


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    from gradio import processing_utils

    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if path.exists():
        try:
            os.utime(path)  # Gradio's delete_cache ages files by ctime: this one is handed out again
        except OSError:
            pass
        return str(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


save_pil_to_cache._atomic = True
