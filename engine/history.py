"""Results that carry their own recipe: every saved PNG holds its settings in text chunks.

`save(result, ...)` writes the edited image(s) under the outputs folder with the method, every
plain input, the seed, the profile and the model ids in a "des-settings" iTXt chunk (JSON), and
`read_settings(png)` gives them back, so a result can be reproduced by dropping it onto its tab.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Optional

from PIL import Image, PngImagePlugin

from engine.types import EditResult

CHUNK = "des-settings"
INPUT_CHUNK = "des-input"   # the input photo, PNG bytes in base64 (compressed iTXt)
MASK_CHUNK = "des-mask"     # the mask the method used, if any
# Every image input a method may take, by its field name on the inputs dataclass, and its chunk.
# LayerDiffusion's subject mask is the mask of its photo editor: it shares the mask's chunk, and
# reads back as "mask" (the first field named for a chunk).
IMAGE_CHUNKS = {"image": INPUT_CHUNK, "mask": MASK_CHUNK, "subject_mask": MASK_CHUNK, "scribble": "des-scribble",
                "scribble_source": "des-scribble-source", "reference": "des-reference",
                "reference_mask": "des-reference-mask"}
MASK_FIELDS = ("mask", "subject_mask", "reference_mask")
# A mask image may carry, in its `info` under this key, the editor state that made it: the painted
# layer (an L image or None) and the settings {"grow", "feather", "invert", "whole_image"} (the UI's
# mask editor puts it there). Saved as JSON, the layer in base64, so History restores the editor
# itself and not only the mask it produced (a feathered mask does not survive a binary brush layer).
EDITOR_STATE = "des-editor"
EDITOR_FIELDS = ("mask", "subject_mask")  # the photo's own editor (LayerDiffusion's reference has its own)
FORMAT_VERSION = 1


def outputs_dir() -> Path:
    return Path(os.environ.get("DES_OUTPUTS", Path.cwd() / "outputs"))


def settings_of(method: str, params: dict, seed: int, profile: str, models: dict) -> dict:
    from engine.report import jsonable

    return {"format": FORMAT_VERSION, "method": method, "seed": int(seed), "profile": profile,
            "params": jsonable(params), "models": models}


def _png_b64(img: Image.Image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _from_b64(text: str) -> Image.Image:
    import base64
    import io

    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img


def save(result: EditResult, method: str, profile: str, models: dict, folder: Optional[Path] = None,
         inputs=None) -> list[Path]:
    """Write each result image with its settings (and the input photo and mask, so the PNG alone
    reproduces the result); returns the paths, in a new run folder, and records them on the result
    as `result.saved_paths` (the UI's results gallery serves these files, settings included)."""
    folder = Path(folder) if folder else outputs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = folder / f"{stamp}-{re.sub(r'[^a-z0-9-]', '', method.lower())}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(method, result.params, result.seed, profile, models)
    paths = []
    extra = {}
    for name, chunk in IMAGE_CHUNKS.items():
        value = getattr(inputs, name, None)
        if isinstance(value, Image.Image) and chunk not in extra:
            mode = "L" if name in MASK_FIELDS else "RGB" if name == "image" else \
                "RGBA" if value.mode in ("RGBA", "LA", "P") else "RGB"
            extra[chunk] = _png_b64(value.convert(mode))
    for name in EDITOR_FIELDS:
        value = getattr(inputs, name, None)
        state = value.info.get(EDITOR_STATE) if isinstance(value, Image.Image) else None
        if isinstance(state, dict) and EDITOR_STATE not in extra:
            painted = state.get("painted")
            extra[EDITOR_STATE] = json.dumps(
                {"grow": state.get("grow", 0), "feather": state.get("feather", 0),
                 "invert": bool(state.get("invert")), "whole_image": bool(state.get("whole_image")),
                 "painted": _png_b64(painted.convert("L")) if isinstance(painted, Image.Image) else None})
    for i, img in enumerate(result.images):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(CHUNK, json.dumps(dict(settings, result_index=i)))
        for key, value in extra.items():
            info.add_itxt(key, value, zip=True)
        info.add_text("Software", "Diffusion Edit Studio")
        path = run_dir / f"result_{i}.png"
        img.save(path, pnginfo=info)
        paths.append(path)
    try:
        result.saved_paths = list(paths)
    except AttributeError:  # a frozen or slotted result type: the caller still has the paths
        pass
    return paths


def read_settings(source) -> dict:
    """Settings stored in a PNG by `save`; ValueError when there are none."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    text = (getattr(img, "text", None) or {}).get(CHUNK) or img.info.get(CHUNK)
    if not text:
        raise ValueError("this image carries no studio settings (only PNGs saved by the studio do)")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("the image's studio settings are damaged") from None
    if not isinstance(settings, dict) or "method" not in settings or "params" not in settings:
        raise ValueError("the image's studio settings are incomplete")
    return settings


def read_images(source) -> dict[str, Image.Image]:
    """Every image input stored by `save`, by field name ("image", "mask", "scribble", ...)."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    chunks = dict(getattr(img, "text", None) or {})
    out = {}
    for name, key in IMAGE_CHUNKS.items():
        if key in chunks and key not in [IMAGE_CHUNKS[n] for n in out]:
            try:
                out[name] = _from_b64(chunks[key])
            except Exception:  # a damaged chunk loses that input, not the settings
                pass
    return out


def read_editor_state(source) -> Optional[dict]:
    """The mask editor state saved with a result (see EDITOR_STATE): {"grow", "feather", "invert",
    "whole_image", "painted": L image or None}, or None when the PNG has none (older results, or a
    method whose mask came from elsewhere)."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    text = (getattr(img, "text", None) or {}).get(EDITOR_STATE)
    if not text:
        return None
    try:
        state = json.loads(text)
        painted = state.get("painted")
        return {"grow": int(state.get("grow") or 0), "feather": int(state.get("feather") or 0),
                "invert": bool(state.get("invert")), "whole_image": bool(state.get("whole_image")),
                "painted": _from_b64(painted) if painted else None}
    except Exception:  # a damaged chunk: restore the mask alone, as for older results
        return None


def recent(folder: Optional[Path] = None, limit: int = 24) -> list[Path]:
    """The newest saved results first."""
    folder = Path(folder) if folder else outputs_dir()
    if not folder.exists():
        return []
    files = sorted(folder.glob("*/result_*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
    return files[:limit]
