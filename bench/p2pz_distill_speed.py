"""The distilled pix2pix-zero generator against our pix2pix-zero edit, side by side in one run, at
the same resolution on the same device (pix2pix-zero Sec. 4.5: 0.018 s per image on an A100,
~3,800x faster than the diffusion edit).

    python -m bench.p2pz_distill_speed --profile tiny --resolution 512 --device cpu
    python -m bench.p2pz_distill_speed --profile sd15-shape --device cuda      # on a GPU

Both are timed through the methods' own `run` (engine.methods.pix2pix_zero_fast and
engine.methods.pix2pix_zero), as the UI and the CLI call them:
- the distilled generator: a checkpoint (`--checkpoint DIR`) or, by default, a random-weight
  generator of `--size` written to a temporary checkpoint (its speed does not depend on the
  weights); `--warmup` runs, then the median `edit` seconds of `--repeat` runs (resize, one
  forward pass, back to an image; fp16 on a GPU);
- pix2pix-zero at the profile's defaults (the tiny profile's quick ones: 10 steps) with a given
  caption: the warm-up run is the first edit (inversion + reconstruction + edit), the median of
  `--diffusion-repeat` further runs is the re-edit (the inversion is cached: only the edit pass).
The speedup is re-edit / distilled (the smaller, honest ratio) and first edit / distilled. The
CPU thread count, the load average and the device go into the row of bench/RESULTS.md.
Targets: >= 1000x against the re-edit; < 20 ms per 512 px image on a GPU; the "small" generator
under 0.5 s at 512 px on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from bench.results import add_row, command_line, run_cli

SECTION = "## Distilled pix2pix-zero against the diffusion edit (python -m bench.p2pz_distill_speed)"
HEADER = ("| date | device | load avg | profile | px | generator | distilled s/image (median) | pix2pix-zero "
          "re-edit s | first edit s | speedup (re-edit / first) | targets | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
INTRO = ("Same photo, same resolution, same device, one run: the distilled generator (one forward pass, "
         "fp16 on a GPU) against pix2pix-zero's `run` (re-edit: the inversion cached; first edit: with "
         "inversion and reconstruction). Targets: >= 1000x against the re-edit; < 0.02 s per 512 px image "
         "on a GPU; < 0.5 s for the small generator at 512 px on a 2-core CPU.")
CAT = "assets/examples/cat.png"
TARGET_SPEEDUP, TARGET_GPU_S, TARGET_CPU_S = 1000.0, 0.020, 0.5


def _checkpoint(args, folder: Path) -> tuple[str, str]:
    """(checkpoint folder, description of the generator)."""
    from engine.methods import p2pz_generator as G

    if args.checkpoint:
        _path, meta = G.inspect_checkpoint(args.checkpoint)
        return args.checkpoint, f"{meta.direction} ({Path(args.checkpoint).name})"
    config = G.SIZES[args.size]
    torch.manual_seed(0)
    G.save_checkpoint(G.DistilledGenerator(config), G.DistilledMeta("cat", "dog", args.resolution, config), folder)
    return str(folder), f"{args.size}, random weights"


def time_distilled(checkpoint: str, photo, models, resolution: int, warmup: int, repeat: int) -> list[float]:
    from engine.methods import pix2pix_zero_fast as fast

    inputs = fast.Pix2PixZeroFastInputs(image=photo, checkpoint=checkpoint, resolution=resolution)
    for _ in range(warmup):
        fast.run(inputs, models)
    return [fast.run(inputs, models).seconds["edit"] for _ in range(repeat)]


def time_pix2pix_zero(photo, models, resolution: int, repeat: int, steps=None) -> tuple[float, list[float]]:
    """(first edit seconds, re-edit seconds) of pix2pix-zero at the profile's defaults."""
    from engine.methods import pix2pix_zero
    from engine.profile_defaults import defaults

    d = defaults(pix2pix_zero, models.profile)
    inputs = pix2pix_zero.Pix2PixZeroInputs(image=photo, source="cat", target="dog", caption="a photo of a cat",
                                            steps=steps or d["steps"], resolution=resolution)
    start = time.perf_counter()
    pix2pix_zero.run(inputs, models)
    first = time.perf_counter() - start
    return first, [pix2pix_zero.run(inputs, models).seconds["total"] for _ in range(repeat)]


def main(argv=None) -> int:
    from bench.latency import device_name
    from engine.core.image import load_image
    from engine.models import ModelCache

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=("tiny", "sd15-shape", "sd15"), default="tiny")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--size", choices=("small", "base"), default="small", help="generator size (random weights)")
    ap.add_argument("--checkpoint", default=None, help="time this distilled checkpoint instead")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of the distilled generator")
    ap.add_argument("--diffusion-repeat", type=int, default=3, help="timed pix2pix-zero re-edits")
    ap.add_argument("--steps", type=int, default=None, help="pix2pix-zero steps (default: the profile's)")
    ap.add_argument("--diffusion-seconds", type=float, default=None,
                    help="a pix2pix-zero re-edit time already measured in this run (bench.suite): not re-timed")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = ModelCache(args.profile, device=args.device)
    photo = load_image(CAT, max_side=min(args.resolution, 1024))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as tmp:
        checkpoint, generator = _checkpoint(args, Path(tmp) / "generator")
        fast_s = statistics.median(time_distilled(checkpoint, photo, models, args.resolution, args.warmup,
                                                  args.repeat))
    if args.diffusion_seconds is not None:
        first, re_edit = float("nan"), args.diffusion_seconds
    else:
        first, runs = time_pix2pix_zero(photo, models, args.resolution, args.diffusion_repeat, args.steps)
        re_edit = statistics.median(runs)
    device = device_name(models)
    speedup, speedup_first = re_edit / fast_s, first / fast_s
    gpu = models.device.type == "cuda"
    per_image_target = TARGET_GPU_S if gpu else TARGET_CPU_S
    checks = [f"speedup {speedup:,.0f}x {'ok' if speedup >= TARGET_SPEEDUP else 'UNDER'} (>= {TARGET_SPEEDUP:.0f}x)",
              f"{fast_s * 1000:.1f} ms/image {'ok' if fast_s < per_image_target else 'OVER'} "
              f"(< {per_image_target * 1000:.0f} ms {'on a GPU' if gpu else 'on the CPU, small at 512 px'})"]
    print(f"device {device}, load average {load:.2f}, profile {args.profile}, {args.resolution} px")
    print(f"distilled ({generator}): {fast_s * 1000:.2f} ms per image (median of {args.repeat})")
    print(f"pix2pix-zero: re-edit {re_edit:.3f} s (median of {args.diffusion_repeat}), first edit {first:.3f} s")
    print(f"speedup: {speedup:,.0f}x against the re-edit, {speedup_first:,.0f}x against the first edit")
    print("targets: " + "; ".join(checks))
    if not gpu:
        print("no GPU here: the < 20 ms per 512 px image target is not measured")
    if not args.no_record:
        add_row(SECTION, HEADER, f"| {date.today()} | {device} | {load:.2f} | {args.profile} | {args.resolution} "
                f"| {generator} | {fast_s:.4f} | {re_edit:.3f} | {first:.3f} | {speedup:,.0f}x / {speedup_first:,.0f}x "
                f"| {'; '.join(checks)} | `{command_line('bench.p2pz_distill_speed', argv)}` |", intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
