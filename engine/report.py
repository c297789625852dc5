"""Writing a run to a folder: edited.png (edited_1.png ...), one PNG per intermediate, report.json."""
from __future__ import annotations

import json
import re
from pathlib import Path

from engine.types import EditResult


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "image"


def write_result(result: EditResult, out: Path, method: str, profile: str, extra: dict | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(result.images):
        img.save(out / ("edited.png" if i == 0 else f"edited_{i}.png"))
    files = {}
    for name, img in result.intermediates.items():
        fname = safe_name(name) + ".png"
        img.save(out / fname)
        files[name] = fname
    report = {
        "method": method,
        "profile": profile,
        "seed": result.seed,
        "params": jsonable(result.params),
        "seconds": result.seconds,
        "unet_evals": result.unet_evals,
        "intermediates": files,
        "notes": result.notes,
    }
    if result.curves:
        report["curves"] = result.curves
    if extra:
        report.update(extra)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def jsonable(value):
    """Plain JSON values: dicts, lists, numbers, text; anything else as its str()."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
