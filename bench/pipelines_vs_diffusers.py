"""SDEdit and the ControlNet img2img path against diffusers' pipelines on the same work, in one process.

python -m bench.pipelines_vs_diffusers [--pair sdedit|iir-net ...] [--profile tiny|sd15-shape|sd15]
    [--resolution 256] [--steps 20] [--rounds 3] [--threads 2] [--device cpu|cuda]
    [--compile [BACKEND]] [--channels-last auto|on|off] [--no-record]

- sdedit: our `sdedit.run` against StableDiffusionImg2ImgPipeline, strength 0.7, CFG 7.5, the
  same photo, prompt, steps and seed (both encode the prompt, the empty negative prompt and the photo
  on every call, run 0.7 x steps CFG steps and decode). Ours rounds strength x steps, diffusers
  truncates it: where that is not a whole number (4 steps: 3 against 2) the work differs, and the
  row says so beside the UNet samples.
- iir-net: our `iir_net.run` in its training-free mode on the whole image (noise k = 0: img2img at
  strength 0.6 under the Canny ControlNet, CFG 9) against StableDiffusionControlNetImg2ImgPipeline
  with the same ControlNet, strength, CFG, steps and the Canny image. Ours does more than theirs:
  the removal image, its own Canny pass and a second VAE encode are in our time; diffusers gets the
  edge image ready-made.

Fairness as in bench.p2pz_vs_diffusers (its helpers are used): one untimed warm-up of each side,
then A-B-B-A rounds (a drift of the machine hits both alike), medians, torch's thread count fixed,
the allocator named, UNet samples counted by a hook on each side. The reference pipelines get their
own copies of the models (loaded by the same `load_sd` / `load_controlnet`, uncompiled); the speed
options (--compile, --channels-last) apply to ours only and are named in the row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from datetime import date

import torch

from bench.latency import device_name
from bench.p2pz_vs_diffusers import allocator_name, timed, unet_samples
from bench.results import add_row, command_line, run_cli

SECTION = "## SDEdit and ControlNet img2img against diffusers' pipelines (interleaved rounds)"
HEADER = ("| date | device | allocator | profile | px | pair | settings | rounds | ours s | diffusers s | speed-up "
          "| UNet samples ours / diffusers | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
INTRO = ("Rows appended by `python -m bench.pipelines_vs_diffusers` (see its docstring): A-B-B-A rounds in one "
         "process, medians, the same photo, prompt, steps, strength, CFG and seed on both sides; speed-up = "
         "diffusers' median / ours.")
PAIRS = ("sdedit", "iir-net")
PROMPT = "a photo of a tiger"


def _pipeline(cls, ref, sd, **extra):
    """A diffusers pipeline of class `cls` on the reference copy `ref`, DDIM, no safety checker."""
    from diffusers import DDIMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls(vae=ref.vae, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer, unet=ref.unet,
                   scheduler=DDIMScheduler.from_config(sd.scheduler_config), safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdedit_pair(models, ref, image, steps: int, resolution: int):
    """(ours, theirs, settings) for SDEdit against StableDiffusionImg2ImgPipeline."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from engine.methods import sdedit as M

    sd = models.sd()
    inputs = M.SDEditInputs(image=image, prompt=PROMPT, strength=0.7, steps=steps, cfg=7.5, seed=0,
                            resolution=resolution)
    pipe = _pipeline(StableDiffusionImg2ImgPipeline, ref, sd)

    def ours():
        M.run(inputs, models)

    def theirs():
        pipe(prompt=PROMPT, image=image, strength=0.7, num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(0), output_type="pil")

    return ours, theirs, f"strength 0.7 of {steps} steps, CFG 7.5"


def iir_net_pair(models, ref, image, steps: int, resolution: int):
    """(ours, theirs, settings) for IIR-Net's training-free mode against the ControlNet img2img pipeline."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from engine.core.conditions import canny
    from engine.methods import iir_net as M
    from engine.models import load_controlnet

    sd = models.sd()
    strength = M.strength_for(0)
    inputs = M.IIRNetInputs(image=image, prompt=PROMPT, whole_image=True, noise=0, steps=steps, cfg=9.0, seed=0,
                            resolution=resolution)
    ours_canny = models.get("controlnet_canny")  # loaded (built, on a fake profile) through the cache
    their_net = load_controlnet(ours_canny.config._name_or_path, models.device, models.dtype)  # its own copy
    edge_image = canny(image, 100, 200)  # the picture ours reads as C(x0), at its default thresholds
    pipe = _pipeline(StableDiffusionControlNetImg2ImgPipeline, ref, sd, controlnet=their_net)

    def ours():
        M.run(inputs, models)

    def theirs():
        pipe(prompt=PROMPT, image=image, control_image=edge_image, strength=strength, num_inference_steps=steps,
             guidance_scale=9.0, controlnet_conditioning_scale=1.0, generator=torch.Generator("cpu").manual_seed(0),
             output_type="pil")

    return ours, theirs, f"training-free, whole image, k 0 (strength {strength}) of {steps} steps, CFG 9, Canny ControlNet"


BUILDERS = {"sdedit": sdedit_pair, "iir-net": iir_net_pair}


def compare(pair: str, models, ref, image, args) -> dict:
    ours, theirs, settings = BUILDERS[pair](models, ref, image, args.steps, args.resolution)
    samples = {"ours": [0], "theirs": [0]}
    with unet_samples(models.sd().unet, samples["ours"]):
        ours()
    with unet_samples(ref.unet, samples["theirs"]):
        theirs()  # the warm-ups count the samples of one job each
    times = {"ours": [], "theirs": []}
    for _ in range(args.rounds):  # A-B-B-A
        times["ours"].append(timed(ours))
        times["theirs"].append(timed(theirs))
        times["theirs"].append(timed(theirs))
        times["ours"].append(timed(ours))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"pair": pair, "settings": settings, "ours": med["ours"], "theirs": med["theirs"],
            "ratio": med["theirs"] / med["ours"], "samples": f"{samples['ours'][0]} / {samples['theirs'][0]}",
            "same_work": samples["ours"][0] == samples["theirs"][0]}


def main(argv=None) -> int:
    from engine.core.image import load_image
    from engine.models import ModelCache, add_speed_arguments, load_sd, speed_options

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", choices=PAIRS, default=[], help="default: both")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--image", default="assets/examples/cat.png")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="A-B-B-A rounds (each times both sides twice)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads, fixed for both sides")
    add_speed_arguments(ap)  # ours only: the reference pipelines run diffusers as shipped
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.steps < 2 or args.rounds < 1 or args.resolution % 64:
        ap.error("--steps must be at least 2, --rounds at least 1, --resolution a multiple of 64")

    torch.set_num_threads(args.threads)
    models = ModelCache(args.profile, device=args.device, **speed_options(args))
    sd = models.sd()
    ref = load_sd(sd.source, models.device, models.dtype)  # the reference pipelines' own copy
    image = load_image(args.image, args.resolution)
    speed = " ".join(f for f in ((f"--compile {args.compile}" if args.compile else ""),
                                 (f"--channels-last {args.channels_last}" if args.channels_last != "auto" else "")) if f)
    alloc = allocator_name()
    name = device_name(models)
    for pair in args.pair or list(PAIRS):
        r = compare(pair, models, ref, image, args)
        print(f"{pair}: ours {r['ours']:.3f} s, diffusers {r['theirs']:.3f} s: {r['ratio']:.2f}x "
              f"(UNet samples ours / diffusers {r['samples']}; {name}, {args.profile}, {args.resolution} px, "
              f"{args.rounds} A-B-B-A rounds{', ours with ' + speed if speed else ''})"
              + ("" if r["same_work"] else "; NOT the same work: the UNet samples differ"), flush=True)
        if not args.no_record:
            settings = r["settings"] + (f"; ours with {speed}" if speed else "")
            settings += "" if r["same_work"] else "; NOT the same work (UNet samples differ)"
            add_row(SECTION, HEADER, f"| {date.today()} | {name} | {alloc} | {args.profile} | {args.resolution} "
                    f"| {pair} | {settings} | {args.rounds} | {r['ours']:.3f} | {r['theirs']:.3f} | {r['ratio']:.2f}x "
                    f"| {r['samples']} | `{command_line('bench.pipelines_vs_diffusers', argv)}` |", intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
