"""Each tab's default run on the tiny profile: python -m bench.tiny_defaults [--method M ...] [--no-record]

Runs every method with the inputs a person gets by uploading the example photo and pressing Edit
(the tiny profile's quick defaults, engine/profile_defaults.py, and the same text the tab's first
example fills in), through the method's `run` as the UI calls it, after loading the models once.
Prints the seconds and appends one row per method to bench/RESULTS.md. The target (issue 15):
at most 20 s each on 2 CPU cores. Not a test: timings never gate CI.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date

import torch

from bench.results import add_row, command_line, run_cli

SECTION = "## Tiny profile: default run per tab"
HEADER = ("| date | device | method | quick defaults | seconds (first run, models loaded) | UNet fwd/bwd "
          "| target | command |\n|---|---|---|---|---|---|---|---|\n")
TARGET_S = 20.0

# What a person types before pressing Edit (the tab's example), per method.
TEXTS = {
    "sdedit": dict(prompt="a photo of a tiger"),
    "pix2pix-zero": dict(source="cat", target="dog"),
    "ito": dict(prompt="a photo of a dog"),
    "iir-net": dict(prompt="a white cat"),
    "iedit": dict(prompt="a photo of a dog", mask_text="cat"),
    "layer-diffusion": dict(text="a cat sitting on a beach", keep_background=True),
}


def tab_inputs(module, photo, profile: str = "tiny", **over):
    """The inputs of the tab's default run: `profile`'s defaults (engine/profile_defaults.py), the text
    of the tab's first example (TEXTS) and the photo; `over` changes fields (unknown ones are dropped,
    like the text fields a method does not have)."""
    from engine.profile_defaults import defaults, inputs_class

    cls = inputs_class(module)
    fields = {**defaults(module, profile), **TEXTS.get(module.NAME, {}), "image": photo, **over}
    return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


def main(argv=None) -> int:
    from engine import methods
    from engine.core.image import load_image
    from engine.models import ModelCache
    from engine.profile_defaults import describe

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--image", default="assets/examples/cat.png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = ModelCache("tiny", device="cpu")
    photo = load_image(args.image, 1024)
    for name in ("sd", "blip", "controlnet_scribble", "controlnet_canny", "grounding_dino", "sam", "clipseg"):
        models.get(name)  # loading is the app's start-up, not the edit
    failed = 0
    for name, module in methods.available().items():
        if args.method and name not in args.method:
            continue
        if name == "pix2pix-zero-fast":  # needs a trained checkpoint; timed by bench.p2pz_distill_speed
            continue
        inputs = tab_inputs(module, photo)
        start = time.perf_counter()
        result = module.run(inputs, models)
        seconds = time.perf_counter() - start
        ok = seconds <= TARGET_S
        failed += not ok
        evals = f"{result.unet_evals['forward']}/{result.unet_evals['backward']}"
        print(f"{name:16s} {seconds:7.1f} s  UNet {evals:>9s}  {'ok' if ok else 'OVER'} ({describe(module, 'tiny')})",
              flush=True)
        if not args.no_record:
            add_row(SECTION, HEADER, f"| {date.today()} | CPU ({args.threads} threads) | {name} "
                    f"| {describe(module, 'tiny')} | {seconds:.1f} | {evals} | <= {TARGET_S:.0f} s "
                    f"| `{command_line('bench.tiny_defaults', ['--method', name, '--threads', str(args.threads)])}` |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
