"""Seconds per UNet evaluation of a profile at a resolution, batch 1 and batch 2 (CFG).

    python -m bench.unet_eval_cost --profile sd15-shape --device cpu --resolution 512 [--threads 2]

With the evaluations a method makes (its report's unet_evals), this bounds from below what an
edit costs on a device where running the whole edit takes too long to measure (pix2pix-zero at
512 px on a 2-core CPU): the UNet dominates, and the VAE, text encoder and regulariser only add.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def unet_inputs(unet, device, batch: int, resolution: int):
    """Random latents, timesteps and text states shaped for one UNet evaluation at `resolution`."""
    side = resolution // 8
    dtype = next(unet.parameters()).dtype
    x = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=dtype)
    c = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor([500] * batch, device=device)
    return x, t, c


def time_unet(unet, x, t, c) -> float:
    """Seconds for one no-grad UNet evaluation, the device's queue drained before and after."""
    cuda = x.device.type == "cuda"
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=c)
        if cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    from engine.models import PROFILES, ModelCache

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=PROFILES, default="sd15-shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = ModelCache(args.profile, device=args.device)
    unet = models.sd().unet
    for batch in (1, 2):
        x, t, c = unet_inputs(unet, models.device, batch, args.resolution)
        times = [time_unet(unet, x, t, c) for _ in range(args.repeats + 1)][1:]  # the first is the warm-up
        print(f"{args.profile} {args.resolution}px {models.device} threads={args.threads} batch {batch}: "
              f"{statistics.median(times):.3f} s per UNet evaluation (median of {args.repeats})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
