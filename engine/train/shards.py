"""Per-item jobs (pair building, evaluation, edited-pair generation) split over processes.

The same command runs on one process or many (`accelerate launch --num_processes N -m ...`):

    job = ShardedJob(out_dir)
    for key in job.mine(keys):      # this process's slice (keys[rank::world]), finished items skipped
        files = ...                 # the item's outputs, written with save_image / write_atomic
        job.finish(key, record, files)
    records = job.merge(keys)       # waits for every process; the main one writes manifest.jsonl

On disk, under out_dir:
- items/KEY.json: one per finished item ({"key", "record", "files", "process", "run"}), written
  last and atomically; an item is done when it exists and every file it names exists, so a job
  killed at any point redoes only the items whose record or outputs are missing;
- parts/RUN-rankR-of-N.jsonl: each process's log of the items it finished in that run (one line
  an item, appended as it goes): the per-process manifests;
- manifest.jsonl: the merge, one line per finished item in the order of `keys`;
- job.json: the job's signature (its settings): rerun with the same one, it resumes; with another,
  the old items are cleared first.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterable, Optional

ITEMS = "items"
PARTS = "parts"
MANIFEST = "manifest.jsonl"
JOB = "job.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def process_group():
    """(rank, world, barrier) of this process: accelerate's when launched by it, else (0, 1, no-op)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from engine.train.accel import process_state

    state = process_state()
    return state.process_index, state.num_processes, state.wait_for_everyone


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_image(image, path: Path) -> None:
    """A PIL image written atomically (a killed job never leaves half a PNG under the final name)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")
    write_atomic(path, buf.getvalue())


def safe_key(key: str) -> str:
    out = _SAFE.sub("_", str(key)).strip("._")
    if not out:
        raise ValueError(f"item key {key!r} has no usable characters")
    return out


class ShardedJob:
    def __init__(self, out: Path, signature: Optional[dict] = None, rank: Optional[int] = None,
                 world: Optional[int] = None, barrier=None):
        """signature: what defines the job's outputs (method, settings, seed...). A folder holding the
        items of another signature is cleared (the job starts over); the same one resumes."""
        r, w, b = process_group() if rank is None else (rank, world or 1, barrier or (lambda: None))
        self.out, self.rank, self.world, self.barrier = Path(out), int(r), int(w), b
        if not 0 <= self.rank < self.world:
            raise ValueError(f"process {self.rank} of {self.world}?")
        if self.is_main and signature is not None:
            self._match(json.loads(json.dumps(signature, default=str)))
        self.barrier()  # no process looks at items/ before the main one has cleared a stale job
        self.run = time.strftime("%Y%m%d-%H%M%S")
        self.part = self.out / PARTS / f"{self.run}-{os.getpid()}-rank{self.rank}-of-{self.world}.jsonl"
        self.done_here: list[str] = []
        self.skipped: list[str] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _match(self, signature: dict) -> None:
        import shutil

        file = self.out / JOB
        try:
            before = json.loads(file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            before = None
        if before != signature:
            for name in (ITEMS, PARTS):
                shutil.rmtree(self.out / name, ignore_errors=True)
            (self.out / MANIFEST).unlink(missing_ok=True)
            write_atomic(file, json.dumps(signature, indent=1, sort_keys=True).encode())

    def record_path(self, key: str) -> Path:
        return self.out / ITEMS / f"{safe_key(key)}.json"

    def read(self, key: str) -> Optional[dict]:
        """The item's record when it is done (its record and every file it names exist), else None."""
        path = self.record_path(key)
        try:
            item = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not all((self.out / f).is_file() for f in item.get("files", [])):
            return None
        return item

    def mine(self, keys: Iterable[str]) -> list[str]:
        """This process's unfinished items: keys[rank::world] that are not done yet."""
        keys = list(keys)
        if len({safe_key(k) for k in keys}) != len(keys):
            raise ValueError("item keys must be unique (after making them file names)")
        todo = []
        for k in keys[self.rank::self.world]:
            (self.skipped if self.read(k) is not None else todo).append(k)
        return todo

    def finish(self, key: str, record: dict, files: Iterable[str] = ()) -> None:
        """Mark an item done: files (relative to out) must already be written."""
        files = [str(f) for f in files]
        missing = [f for f in files if not (self.out / f).is_file()]
        if missing:
            raise RuntimeError(f"item {key}: outputs not written: {', '.join(missing)}")
        item = {"key": key, "record": record, "files": files, "process": self.rank, "run": self.run}
        line = json.dumps(item, ensure_ascii=False)
        write_atomic(self.record_path(key), line.encode())
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.done_here.append(key)

    def merge(self, keys: Iterable[str]) -> list[dict]:
        """Wait for every process; the main one writes manifest.jsonl (finished items in key order).
        Every process returns the finished items' records, in key order."""
        self.barrier()
        items = [it for it in (self.read(k) for k in keys) if it is not None]
        if self.is_main:
            text = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
            write_atomic(self.out / MANIFEST, text.encode())
        self.barrier()
        return items


def read_parts(out: Path) -> list[dict]:
    """Every line of every per-process manifest under out/parts (all runs), oldest run first."""
    rows = []
    for part in sorted((Path(out) / PARTS).glob("*.jsonl")):
        rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def read_captions(path) -> dict[str, str]:
    """A --captions JSON file {"image file name": "caption", ...} (none: {}); ValueError otherwise.
    Used by the pair-building jobs (engine.train.iedit_pairs, engine.train.p2pz_pairs)."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no captions file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f'{path}: expected {{"image file name": "caption", ...}}')
    return data
