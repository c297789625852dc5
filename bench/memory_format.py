"""Seconds per UNet evaluation in NCHW and in channels-last memory order, interleaved rounds.

    python -m bench.memory_format --profile sd15-shape --device cuda --resolution 512 [--rounds 3]

Decides `--channels-last auto` (engine.models.ModelCache.channels_last): on by default where it
is faster. Each round times NCHW, channels-last, channels-last, NCHW (A-B-B-A, batch 2 as under
classifier-free guidance) on one UNet converted in place between the timings, after a warm-up of
each; the medians and their ratio go to bench/RESULTS.md with this command.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from datetime import date

import torch

from bench.results import add_row, command_line, run_cli
from bench.unet_eval_cost import time_unet, unet_inputs

SECTION = "## channels-last memory order (python -m bench.memory_format)"
HEADER = ("| date | device | profile | px | NCHW s / UNet eval | channels-last s | NCHW / channels-last "
          "| command |\n|---|---|---|---|---|---|---|---|\n")


def main(argv=None) -> int:
    from engine.models import PROFILES, ModelCache

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=PROFILES, default="sd15-shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.resolution % 8 or not 64 <= args.resolution <= 1024:
        raise ValueError("resolution must be a multiple of 8 from 64 to 1024")
    torch.set_num_threads(args.threads)
    models = ModelCache(args.profile, device=args.device, channels_last=False)
    unet = models.sd().unet
    x, t, c = unet_inputs(unet, models.device, 2, args.resolution)

    def timed(order) -> float:
        unet.to(memory_format=order)
        return time_unet(unet, x, t, c)

    nchw, last = torch.contiguous_format, torch.channels_last
    timed(nchw), timed(last)  # warm-up of each
    a, b = [], []
    for _ in range(args.rounds):
        a.append(timed(nchw)), b.append(timed(last)), b.append(timed(last)), a.append(timed(nchw))
    unet.to(memory_format=nchw)
    ma, mb = statistics.median(a), statistics.median(b)
    device = (torch.cuda.get_device_name(models.device) if models.device.type == "cuda"
              else f"CPU ({args.threads} threads)")
    print(f"{device} {args.profile} {args.resolution}px batch 2: NCHW {ma:.3f} s, channels-last {mb:.3f} s "
          f"per UNet evaluation (NCHW / channels-last = {ma / mb:.2f}x, medians of {2 * args.rounds})")
    if not args.no_record:
        add_row(SECTION, HEADER, f"| {date.today()} | {device} | {args.profile} | {args.resolution} | {ma:.3f} "
                f"| {mb:.3f} | {ma / mb:.2f}x | `{command_line('bench.memory_format', argv)}` |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
