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
FORMAT_VERSION = 1


def outputs_dir() -> Path:
    return Path(os.environ.get("DES_OUTPUTS", Path.cwd() / "outputs"))


def settings_of(method: str, params: dict, seed: int, profile: str, models: dict) -> dict:
    return {"format": FORMAT_VERSION, "method": method, "seed": int(seed), "profile": profile,
            "params": params, "models": models}


def save(result: EditResult, method: str, profile: str, models: dict, folder: Optional[Path] = None) -> list[Path]:
    """Write each result image with its settings; returns the paths (newest run folder)."""
    folder = Path(folder) if folder else outputs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = folder / f"{stamp}-{re.sub(r'[^a-z0-9-]', '', method.lower())}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(method, result.params, result.seed, profile, models)
    paths = []
    for i, img in enumerate(result.images):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(CHUNK, json.dumps(dict(settings, result_index=i)))
        info.add_text("Software", "Diffusion Edit Studio")
        path = run_dir / f"result_{i}.png"
        img.save(path, pnginfo=info)
        paths.append(path)
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


def recent(folder: Optional[Path] = None, limit: int = 24) -> list[Path]:
    """The newest saved results first."""
    folder = Path(folder) if folder else outputs_dir()
    if not folder.exists():
        return []
    files = sorted(folder.glob("*/result_*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
    return files[:limit]
