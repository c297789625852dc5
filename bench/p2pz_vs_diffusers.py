"""pix2pix-zero: our edit against diffusers' deprecated StableDiffusionPix2PixZeroPipeline, with the
same model and settings, in the same process (imported as a reference, never copied).

python -m bench.p2pz_vs_diffusers [--profile tiny|sd15-shape|sd15] [--steps 50] [--resolution 512]
    [--repeat 3] [--no-record]

Both do the whole job for one photo: regularised DDIM inversion (5 iterations, lambda 20),
reconstruction for the reference cross-attention maps, and the edit with cross-attention guidance
0.1 and CFG 5. The row appended to bench/RESULTS.md gives the median seconds of each and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from datetime import date

import torch

from bench.latency import device_name
from bench.results import add_row, command_line


SECTION = "## pix2pix-zero against diffusers' deprecated pipeline"
HEADER = ("| date | device | profile | px | settings | ours s | ours, re-edit s | diffusers s | speed-up | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n")

def main(argv=None) -> int:
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants import StableDiffusionPix2PixZeroPipeline

    from engine.core import sampling as S
    from engine.core.image import load_image
    from engine.methods import p2pz_directions as D
    from engine.methods import pix2pix_zero as P
    from engine.models import ModelCache, load_sd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--image", default="assets/examples/cat.png")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    models = ModelCache(args.profile)
    sd = models.sd()
    image = load_image(args.image, args.resolution)
    caption = "a photo of a cat"
    inputs = P.Pix2PixZeroInputs(image=image, source="cat", target="dog", caption=caption, steps=args.steps,
                                 xa_guidance=0.1, cfg=5.0, resolution=args.resolution)
    # The reference pipeline switches processors and requires_grad on its UNet: give it its own copy.
    ref = load_sd(sd.source, models.device, models.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPix2PixZeroPipeline(
            vae=ref.vae, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer, unet=ref.unet,
            scheduler=DDIMScheduler.from_config(sd.scheduler_config), feature_extractor=None, safety_checker=None,
            inverse_scheduler=DDIMInverseScheduler.from_config(sd.scheduler_config), caption_generator=None,
            caption_processor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    d = D.edit_direction(models, "cat", "dog")
    src = D.cached_bank_embedding(models, sd, d.source)[0][None].to(models.dtype)
    tgt = D.cached_bank_embedding(models, sd, d.target)[0][None].to(models.dtype)
    x0 = S.encode_image(sd, image)

    def ours():
        P.CACHE.clear()  # a first edit: inversion and reference maps included
        return P.run(inputs, models)

    def theirs():
        inv = pipe.invert(prompt=caption, image=x0, num_inference_steps=args.steps, lambda_auto_corr=20.0,
                          lambda_kl=20.0, num_reg_steps=5, output_type="latent").latents
        return pipe(prompt=caption, source_embeds=src, target_embeds=tgt, num_inference_steps=args.steps,
                    cross_attention_guidance_amount=0.1, guidance_scale=5.0, latents=inv, output_type="pil")

    def timed(fn):
        fn()  # warm-up
        out = []
        for _ in range(args.repeat):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    t_ours = timed(ours)
    t_theirs = timed(theirs)
    P.CACHE.clear()
    P.run(inputs, models)
    reedit = P.Pix2PixZeroInputs(**{**inputs.__dict__, "xa_guidance": 0.05})
    t0 = time.perf_counter()
    P.run(reedit, models)
    t_reedit = time.perf_counter() - t0
    ratio = t_theirs / t_ours
    print(f"device {device_name(models)}, profile {args.profile}, {args.resolution} px, {args.steps} steps")
    print(f"ours {t_ours:.3f} s (re-edit with a new lambda {t_reedit:.3f} s), diffusers {t_theirs:.3f} s, "
          f"ratio {ratio:.2f}x")
    if not args.no_record:
        cmd = command_line("bench.p2pz_vs_diffusers", argv or sys.argv[1:])
        add_row(SECTION, HEADER, f"| {date.today()} | {device_name(models)} | {args.profile} | {args.resolution} "
                f"| {args.steps} inversion + reconstruction + edit steps, reg 5x lambda 20, xa 0.1, CFG 5 "
                f"| {t_ours:.3f} | {t_reedit:.3f} | {t_theirs:.3f} | {ratio:.2f}x | `{cmd}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
