"""iEdit's paired data: (source image, pseudo-target image, edit prompt, masks) records in JSON lines.

One JSON object per line (paths relative to the pairs file's folder, or absolute):
    {"source": "imgs/a.png", "target": "imgs/b.png",
     "source_caption": "a brown horse eating grass", "edit_prompt": "a white horse eating grass",
     "source_word": "brown", "target_word": "white", "pos": "adjective",
     "source_diff": "brown horse", "target_diff": "white horse",
     "source_mask": "pairs_masks/000000_source.png", "target_mask": "pairs_masks/000000_target.png"}
Required: source, target, edit_prompt. The diff phrases default to the swapped words, then to the
edit prompt; masks are optional (the trainer makes them with CLIPSeg when absent).

`read_pairs` validates the whole file first (bad JSON, missing keys, missing image files) and
raises one ValueError listing the problems; `load_pair` gives the tensors the trainer needs at
the training resolution (a centre square, as the paper trains at 384 x 384).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from engine.core import masks as MK
from engine.core.image import load_image, to_rgb
from engine.core.sampling import pil_to_tensor

REQUIRED = ("source", "target", "edit_prompt")


@dataclass
class PairRecord:
    source: str
    target: str
    edit_prompt: str
    source_caption: str = ""
    source_word: str = ""
    target_word: str = ""
    pos: str = ""
    source_diff: str = ""
    target_diff: str = ""
    source_mask: Optional[str] = None
    target_mask: Optional[str] = None

    @property
    def y1_diff(self) -> str:
        return self.source_diff or self.source_word or self.source_caption or self.edit_prompt

    @property
    def y2_diff(self) -> str:
        return self.target_diff or self.target_word or self.edit_prompt


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_pairs(path) -> list[PairRecord]:
    """Every record of a pairs file, with paths made absolute; ValueError listing all problems."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no pairs file at {path}")
    base = path.resolve().parent
    records, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected a JSON object")
            continue
        missing = [k for k in REQUIRED if not str(obj.get(k) or "").strip()]
        if missing:
            problems.append(f"line {n}: missing {', '.join(missing)}")
            continue
        known = {k: obj[k] for k in PairRecord.__dataclass_fields__ if k in obj and obj[k] is not None}
        for key in ("source", "target", "source_mask", "target_mask"):
            if key in known:
                known[key] = _resolve(base, str(known[key]))
                if not Path(known[key]).is_file():
                    problems.append(f"line {n}: {key} image not found: {known[key]}")
        records.append(PairRecord(**known))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{path}: {len(problems)} problem(s): {shown}")
    if not records:
        raise ValueError(f"{path} holds no pairs")
    return records


def write_pairs(path, records: list[PairRecord]) -> None:
    """Write records as JSON lines, with paths relative to the file's folder where possible."""
    path = Path(path)
    base = path.resolve().parent
    lines = []
    for rec in records:
        obj = {k: v for k, v in asdict(rec).items() if v not in (None, "")}
        for key in ("source", "target", "source_mask", "target_mask"):
            if key in obj:
                try:
                    obj[key] = os.path.relpath(Path(obj[key]).resolve(), base)
                except ValueError:  # another drive (Windows)
                    obj[key] = str(Path(obj[key]).resolve())
        lines.append(json.dumps(obj, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- tensors for training ----------------------------------------------------------------------------
def centre_square(image: Image.Image, size: int, resample=Image.Resampling.LANCZOS) -> Image.Image:
    """Resize the shortest side to `size` and crop the centre size x size."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


@dataclass
class PairTensors:
    x1: torch.Tensor  # source image (1, 3, R, R) in [-1, 1]
    x2: torch.Tensor  # pseudo-target image
    m1: Optional[torch.Tensor]  # source mask (1, 1, R, R) in {0, 1}, None when the record has none
    m2: Optional[torch.Tensor]
    source_image: Image.Image
    target_image: Image.Image


def _mask_tensor(path: Optional[str], like: Image.Image, size: int) -> Optional[torch.Tensor]:
    if not path:
        return None
    with Image.open(path) as img:
        m = MK.mask_from_image(img.copy(), like.size)  # same aspect ratio as its photo
    m_img = Image.fromarray((MK.binarize(m, 0.5) * 255).astype(np.uint8), "L")
    m_sq = centre_square(m_img, size, Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(m_sq, dtype=np.float32) / 255.0)[None, None]


def load_pair(rec: PairRecord, size: int) -> PairTensors:
    """The record's images (and masks) as centre squares of `size` pixels."""
    side = min(1024, 2 * size)  # enough pixels for the centre square of a non-square photo
    src = load_image(rec.source, side)
    tgt = load_image(rec.target, side)
    s_sq, t_sq = centre_square(to_rgb(src), size), centre_square(to_rgb(tgt), size)
    return PairTensors(pil_to_tensor(s_sq), pil_to_tensor(t_sq), _mask_tensor(rec.source_mask, src, size),
                       _mask_tensor(rec.target_mask, tgt, size), s_sq, t_sq)


# -- streaming (the trainer reads one pair per step from disk) -----------------------------------------
class PairDataset(torch.utils.data.Dataset):
    """The pairs of a pairs file, read from disk one at a time (never all in memory).

    Holds only the validated records (paths and strings); `dataset[i]` loads pair i's images and
    masks at the training resolution and returns CPU tensors and its texts:
    {"index", "x1", "x2" (3, R, R) in [-1, 1], "m1", "m2" (1, R, R) in {0, 1} or None,
     "edit_prompt", "y1_diff", "y2_diff"}. `shard=(k, n)` keeps the records k, k + n, k + 2n ...
    of the file, so n jobs can split one pairs file.
    """

    def __init__(self, path, size: int, shard: tuple[int, int] = (0, 1)):
        k, n = shard
        if not (isinstance(n, int) and isinstance(k, int) and n >= 1 and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
        self.records = read_pairs(path)[k::n]
        if not self.records:
            raise ValueError(f"{path}: shard {k} of {n} holds no pairs")
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        p = load_pair(rec, self.size)
        return {"index": int(i), "x1": p.x1[0], "x2": p.x2[0],
                "m1": None if p.m1 is None else p.m1[0], "m2": None if p.m2 is None else p.m2[0],
                "edit_prompt": rec.edit_prompt, "y1_diff": rec.y1_diff, "y2_diff": rec.y2_diff}
