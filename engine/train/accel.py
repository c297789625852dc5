"""What every trainer shares to run under Hugging Face `accelerate`, on one process or many.

    python -m engine.train.X ...                                   # one process (CPU or one GPU)
    accelerate launch --multi_gpu --num_processes 8 -m engine.train.X ...   # 8 GPUs, data parallel
    accelerate launch --config_file node.yaml -m engine.train.X ...         # several machines

- `add_arguments`: the flags every trainer takes (--mixed-precision, --grad-accum,
  --gradient-checkpointing, --save-every, --resume [latest|FOLDER]).
- `make_accelerator`: the `Accelerator`, with the mixed precision resolved (`resolve_precision`:
  "auto" is bf16 on a GPU that supports it, fp16 on an older GPU, no on the CPU).
- Data: every optimisation step has a *global* batch of `batch x processes x accumulation`
  samples whose dataset indices come from (seed, step) only (`global_indices`, epoch-wise
  permutations); process r of N takes its contiguous slice (`rank_slice`). Each sample's own
  randomness (noise, timestep, dropout) comes from `sample_generator(seed, step, j)` with j its
  global position. So N processes with batch b see exactly the samples and noise that 1 process
  with batch N x b sees, and DDP's gradient mean equals the 1-process gradient; and a resumed
  run needs no saved data-order or RNG state to continue the same stream.
- Checkpoints: `save_checkpoint` writes ROOT/checkpoint-NNNNNN/ with `accelerator.save_state`
  (trainable model as safetensors, optimizer, scaler, RNG) and `progress.json` written last, by a
  temporary folder renamed at the end: a folder without progress.json is an interrupted save and
  is never resumed from. `find_resume` maps `--resume latest` to the newest complete one.
- `MainLog`: messages and progress bars from the main process only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

PRECISIONS = ("auto", "no", "fp16", "bf16")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PROGRESS = "progress.json"


# -- flags ----------------------------------------------------------------------------------------------
def add_arguments(p, save_every: int) -> None:
    p.add_argument("--mixed-precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on a GPU that supports it, fp16 on an older GPU, no on the CPU")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per optimisation step")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the trained model's activations in the backward pass (less memory, ~30%% slower)")
    p.add_argument("--save-every", type=int, default=save_every, help="write a checkpoint every N steps (and at the end)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|FOLDER",
                   help="continue from the newest checkpoint in --out (latest, the default) or from FOLDER")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="training-state checkpoints kept (newest)")


def check_arguments(grad_accum: int, save_every: int) -> None:
    if not 1 <= int(grad_accum) <= 4096:
        raise ValueError(f"--grad-accum must be between 1 and 4096, got {grad_accum}")
    if int(save_every) < 1:
        raise ValueError(f"--save-every must be at least 1, got {save_every}")


# -- the accelerator -------------------------------------------------------------------------------------
def resolve_precision(requested: str, device_type: str) -> tuple[str, str]:
    """(precision, why) for --mixed-precision on this device; ValueError when it cannot run here."""
    if requested not in PRECISIONS:
        raise ValueError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda = device_type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if requested == "auto":
        if not cuda:
            return "no", "auto -> no: CPU training runs in fp32"
        return ("bf16", "auto -> bf16: this GPU supports bf16") if bf16_ok else \
            ("fp16", "auto -> fp16: this GPU has no bf16 (pre-Ampere); gradients are scaled")
    if requested == "fp16" and not cuda:
        raise ValueError("--mixed-precision fp16 needs a GPU; on the CPU use no (or bf16)")
    if requested == "bf16" and cuda and not bf16_ok:
        raise ValueError("--mixed-precision bf16: this GPU does not support bf16; use fp16 or no")
    return requested, f"{requested} (as requested)"


def wants_cpu() -> bool:
    """CPU processes: asked for (`accelerate launch --cpu` sets ACCELERATE_USE_CPU) or no GPU here.
    On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` (torchrun) then
    gives N CPU processes joined by gloo: accelerate 1.15's own `--cpu --num_processes N` starts
    one process unless an MPI hostfile is given."""
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def process_state(cpu: Optional[bool] = None):
    """accelerate's PartialState of this process (gloo between CPU processes)."""
    from accelerate.state import PartialState

    return PartialState(cpu=wants_cpu() if cpu is None else bool(cpu))


def make_accelerator(mixed_precision: str = "auto", cpu: Optional[bool] = None):
    """The Accelerator for this process (launched by `accelerate launch` or plain python).
    Returns (accelerator, why the precision is what it is). cpu=None: see wants_cpu."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = wants_cpu() if cpu is None else bool(cpu)
    partial = process_state(cpu)
    precision, why = resolve_precision(mixed_precision, partial.device.type)
    if AcceleratorState._shared_state and partial.num_processes == 1:
        # a second run in the same process (tests, notebooks): a fresh state, maybe another precision
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
    return accelerator, why


def unwrap(accelerator, model):
    return accelerator.unwrap_model(model)


# -- the data of a step -------------------------------------------------------------------------------------
def _seed_of(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, j: int) -> torch.Generator:
    """The random stream of the j-th sample (global position) of optimisation step `step`."""
    return torch.Generator().manual_seed(_seed_of(seed, step, j))


def global_indices(n: int, seed: int, step: int, size: int) -> list[int]:
    """Dataset indices of the `size` samples of step `step` (0-based): consecutive positions of an
    endless sequence of epochs, each a permutation of range(n) drawn from (seed, epoch)."""
    if n < 1:
        raise ValueError("the dataset is empty")
    out, pos = [], step * size
    perm_epoch, perm = -1, None
    for p in range(pos, pos + size):
        epoch = p // n
        if epoch != perm_epoch:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_of(seed, -1, epoch)))
            perm_epoch = epoch
        out.append(int(perm[p % n]))
    return out


def rank_slice(items: list, rank: int, world: int) -> tuple[int, list]:
    """Process `rank`'s contiguous share of a global batch: (its first global position, its items)."""
    if len(items) % world:
        raise ValueError(f"a global batch of {len(items)} does not split over {world} processes")
    k = len(items) // world
    return rank * k, items[rank * k:(rank + 1) * k]


class StepBatches(torch.utils.data.Dataset):
    """Wraps a map-style dataset for a DataLoader: item s is this process's share of micro-batch
    s (steps x accumulation), as a list of (global position j, dataset item). Workers load ahead."""

    def __init__(self, dataset, seed: int, start: int, steps: int, batch: int, accum: int, rank: int, world: int):
        self.dataset, self.seed, self.batch, self.accum = dataset, seed, batch, accum
        self.start, self.steps, self.rank, self.world = start, steps, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.accum

    def __getitem__(self, s: int):
        step, micro = divmod(self.start * self.accum + s, self.accum)
        size = self.batch * self.world * self.accum
        idx = global_indices(len(self.dataset), self.seed, step, size)
        micro_idx = idx[micro * self.batch * self.world:(micro + 1) * self.batch * self.world]
        first, mine = rank_slice(micro_idx, self.rank, self.world)
        offset = micro * self.batch * self.world + first
        return step, [(offset + k, i, self.dataset[i]) for k, i in enumerate(mine)]


def _as_is(batch):
    return batch


def step_loader(dataset, seed: int, start: int, steps: int, batch: int, accum: int, accelerator, workers: int = 0):
    """A DataLoader over this process's micro-batches from step `start` on, in order. Not passed to
    accelerator.prepare: the (seed, step) indexing above already splits the data between processes."""
    data = StepBatches(dataset, seed, start, steps, batch, accum, accelerator.process_index, accelerator.num_processes)
    return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=int(workers),
                                       collate_fn=_as_is, prefetch_factor=2 if workers else None,
                                       persistent_workers=False)


# -- checkpoints --------------------------------------------------------------------------------------------
def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in root (progress.json present), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT.match(p.name)
        if m and p.is_dir() and (p / PROGRESS).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(root: Path, resume: Optional[str]) -> Optional[Path]:
    """--resume latest -> the newest complete checkpoint in root (None when there is none yet);
    --resume FOLDER -> that checkpoint (ValueError when it is not one)."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(root)
        return found[-1][1] if found else None
    folder = Path(resume)
    if not (folder / PROGRESS).is_file():
        raise ValueError(f"--resume {resume}: not a complete checkpoint folder (no {PROGRESS} inside)")
    return folder


def read_progress(folder: Path) -> dict:
    return json.loads((Path(folder) / PROGRESS).read_text())


def save_checkpoint(accelerator, root: Path, step: int, progress: dict, extra=None) -> Path:
    """accelerator.save_state into root/checkpoint-NNNNNN (every process calls it); extra(folder), the
    trainer's own files (the main process writes them), then progress.json last."""
    root = Path(root)
    final = root / f"checkpoint-{step:06d}"
    tmp = root / f".saving-checkpoint-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra is not None:
            extra(tmp)
        (tmp / PROGRESS).write_text(json.dumps(dict(progress, step=step, processes=accelerator.num_processes), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path) -> dict:
    """accelerator.load_state from a checkpoint folder; returns its progress.json."""
    progress = read_progress(folder)
    accelerator.load_state(str(folder))
    return progress


def prune(root: Path, keep: int) -> None:
    """Keep only the newest `keep` complete checkpoints (main process)."""
    for _, folder in checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)


# -- logging ------------------------------------------------------------------------------------------------
class MainLog:
    """Prints and progress bars from the main process only (the others stay quiet)."""

    def __init__(self, accelerator, quiet: bool = False):
        self.main = accelerator.is_main_process
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if self.main:
            print(message, file=sys.stderr, flush=True)

    def bar(self, total: int, initial: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=self.quiet or not self.main,
                    file=sys.stderr)
