"""Latency of any method: python -m bench.latency METHOD [the CLI's flags] [--repeat N] [--warmup N].

Takes exactly the flags of `python -m engine METHOD` (so any setting can be timed), runs the
method `--warmup` times untimed and `--repeat` times timed, prints seconds per stage, UNet
evaluations and peak GPU memory, and appends one row to bench/RESULTS.md with the device and
the command that produced it. Not a test: timings never gate CI.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date

import torch

from bench.results import add_row, command_line, numbers, run_cli

SECTION = "## Latency"
HEADER = ("| date | device | method | profile | px | settings | seconds (median) | per stage | UNet fwd/bwd "
          "| models resident GB | peak GB | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def device_name(models) -> str:
    if models.device.type == "cuda":
        return torch.cuda.get_device_name(models.device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    from engine import methods
    from engine.__main__ import _open_file, build_parser
    from engine.core.image import open_image
    from engine.models import ModelCache, speed_options

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--repeat", type=int, default=3)
    extra.add_argument("--warmup", type=int, default=1)
    extra.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    own, rest = extra.parse_known_args(argv)
    if "--out" not in rest:
        rest += ["--out", tempfile.mkdtemp(prefix="bench-")]
    args = build_parser().parse_args(rest)
    module = methods.get(args.method)
    models = ModelCache(args.profile, device=args.device, memory=args.memory, overrides=dict(args.model),
                        **speed_options(args))
    image = open_image(args.image)
    inputs = module.inputs_from_args(args, image, _open_file)

    cuda = models.device.type == "cuda"
    t0 = time.perf_counter()
    models.sd()
    load_s = time.perf_counter() - t0
    resident = torch.cuda.memory_allocated(models.device) / 2**30 if cuda else float("nan")
    for _ in range(own.warmup):
        module.run(inputs, models)
    if cuda:
        torch.cuda.reset_peak_memory_stats(models.device)
    runs = []
    for _ in range(own.repeat):
        runs.append(module.run(inputs, models))
    peak = torch.cuda.max_memory_allocated(models.device) / 2**30 if cuda else float("nan")
    total = statistics.median(r.seconds["total"] for r in runs)
    stages = {k: round(statistics.median(r.seconds.get(k, 0.0) for r in runs), 3)
              for k in runs[0].seconds if k != "total"}
    evals = runs[0].unet_evals
    settings = numbers(runs[0].params)
    print(f"device: {device_name(models)}; profile {args.profile}; load {load_s:.1f} s")
    print(f"{args.method}: {total:.3f} s median of {own.repeat}; stages {stages}")
    print(f"UNet evaluations: {evals}; models resident {resident:.2f} GB; peak {peak:.2f} GB")
    if not own.no_record:
        command = command_line("bench.latency", argv)
        add_row(SECTION, HEADER, f"| {date.today()} | {device_name(models)} | {args.method} | {args.profile} "
                f"| {args.resolution} | {settings} | {total:.3f} | {stages} | {evals['forward']}/{evals['backward']} "
                f"| {resident:.2f} | {peak:.2f} | `{command}` |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
