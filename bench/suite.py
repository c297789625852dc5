"""The GPU suite, one call: every method at its paper defaults, pix2pix-zero, SDEdit and the ControlNet
img2img path against diffusers' pipelines, and the whole app's memory, appended to bench/RESULTS.md.

    python -m bench.suite --device cuda                 # sd15-shape profile, 512 px, fp16 (on a GPU)
    python -m bench.suite --dry-run                     # tiny profile on the CPU, small settings (CI)
    bash bench/gpu_suite.sh                             # a bare CUDA machine: installs carried wheels first

For each method: one warm-up run, then `--repeat` timed runs (median), seconds per stage, UNet
evaluations, GPU memory resident after loading and peak during the runs. The cases are the CLI's
own flags (`python -m engine METHOD ...`), so every row can be reproduced with `python -m
bench.latency METHOD <the same flags>`. The targets of issue 18 (H100, sd15-shape, 512 px, fp16)
are printed beside each median. The distilled pix2pix-zero generator (issue 17, the "small" size)
is timed last against the pix2pix-zero case's median (bench.p2pz_distill_speed, its own section of
RESULTS.md). Rows are recorded only for real runs, not dry runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date

import torch

from bench.results import add_row, command_line, run_cli
from engine.models import APP_COMPONENTS  # the models the tabs need (the start-up check's list)

SECTION = "## GPU suite (python -m bench.suite)"
HEADER = ("| date | device | profile | px | case | seconds (median) | target s | per stage | UNet fwd/bwd "
          "| resident GB | peak GB | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
INTRO = ("One row per case of one suite run (`python -m bench.suite --device cuda` on the sd15-shape profile: the "
         "full SD1.5 architecture with random weights, 512 px, fp16). The segmenters, BLIP and CLIP have no "
         "full-size random stand-in, so their memory is not in the whole-app row.")

CAT, ASTRONAUT = "assets/examples/cat.png", "assets/examples/astronaut.png"
HALF = "bench/inputs/cat_left_half_mask.png"
# name: (method, image, the CLI's flags at the paper's defaults, flags for the dry run, target s on an H100)
CASES = {
    "sdedit": ("sdedit", CAT, ["--prompt", "a photo of a tiger", "--strength", "0.7", "--steps", "50"],
               ["--steps", "4"], 1.2),
    "pix2pix-zero": ("pix2pix-zero", CAT, ["--source", "cat", "--target", "dog", "--caption", "a photo of a cat"],
                     ["--steps", "10"], 4.0),
    "ito": ("ito", ASTRONAUT, ["--caption", "a photo of an astronaut", "--pose", "bench/inputs/pose_raised_wrist_64.json",
                               "--pose-source", "bench/inputs/pose_source_64.json"],
            ["--steps", "4", "--tu", "2", "--mask-seeds", "2"], 2.5),
    "iir-net": ("iir-net", CAT, ["--prompt", "a white cat", "--mask", HALF], ["--steps", "4"], 0.8),
    "iedit": ("iedit", CAT, ["--prompt", "a photo of a dog", "--mask", HALF], ["--steps", "4", "--num-results", "2"],
              1.5),
    "layer-diffusion": ("layer-diffusion", CAT, ["--text", "a cat sitting on a beach"],
                        ["--embed-steps", "2", "--tune-steps", "2", "--steps", "2"], 30.0),
}


def gb(value: float) -> float:
    return round(value / 2**30, 2)


def measure(case: str, models, resolution: int, repeat: int, dry: bool, speed_flags: tuple = ()) -> dict:
    """Warm-up + `repeat` runs of one case through the CLI's own parsing (`speed_flags`: the suite's
    --compile and --channels-last, which `models` was made with, for the row's command)."""
    from engine import methods
    from engine.__main__ import _open_file, build_parser
    from engine.core.image import open_image

    method, image, flags, dry_flags, target = CASES[case]
    argv = [method, "--image", image, "--out", tempfile.mkdtemp(prefix="suite-"), "--profile", models.profile,
            "--resolution", str(resolution), *flags, *(dry_flags if dry else [])]
    args = build_parser().parse_args(argv)
    module = methods.get(method)
    inputs = module.inputs_from_args(args, open_image(args.image), _open_file)
    cuda = models.device.type == "cuda"
    warm = module.run(inputs, models)  # warm-up: lazy loading, kernels, caches (and compiling, with --compile)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(models.device)
    resident = gb(torch.cuda.memory_allocated(models.device)) if cuda else float("nan")
    runs = [module.run(inputs, models) for _ in range(repeat)]
    peak = gb(torch.cuda.max_memory_allocated(models.device)) if cuda else float("nan")
    return {"case": case, "seconds": statistics.median(r.seconds["total"] for r in runs), "target": target,
            "stages": {k: round(statistics.median(r.seconds.get(k, 0.0) for r in runs), 3)
                       for k in runs[0].seconds if k != "total"},
            "evals": runs[0].unet_evals, "resident": resident, "peak": peak, "warmup": warm.seconds["total"],
            "command": "python -m bench.latency " + " ".join([a for a in argv if not a.startswith("/tmp")]
                                                             + list(speed_flags))}


def main(argv=None) -> int:
    from bench.latency import device_name
    from engine.models import ModelCache, add_speed_arguments, speed_options

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--profile", default=None, help="default: sd15-shape (tiny with --dry-run)")
    ap.add_argument("--resolution", type=int, default=None, help="default 512 (128 with --dry-run)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 3; 1 with --dry-run)")
    ap.add_argument("--case", action="append", default=[], choices=list(CASES), help="only these cases")
    ap.add_argument("--dry-run", action="store_true", help="tiny profile, CPU, small settings: checks the suite runs")
    ap.add_argument("--no-compare", action="store_true", help="skip the comparisons with diffusers' pipelines")
    add_speed_arguments(ap)  # --compile (the warm-up run compiles) and --channels-last, as in bench.latency
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    dry = args.dry_run
    profile = args.profile or ("tiny" if dry else "sd15-shape")
    device = args.device or ("cpu" if dry else None)
    resolution = args.resolution or (128 if dry else 512)
    repeat = args.repeat or (1 if dry else 3)
    record = not (args.no_record or dry)
    start = time.perf_counter()
    models = ModelCache(profile, device=device, **speed_options(args))
    speed_flags = ((["--compile", args.compile] if args.compile else [])
                   + (["--channels-last", args.channels_last] if args.channels_last != "auto" else []))
    cuda = models.device.type == "cuda"
    rows = []
    for case in args.case or list(CASES):
        r = measure(case, models, resolution, repeat, dry, speed_flags)
        rows.append(r)
        print(f"{case:16s} {r['seconds']:8.3f} s (target {r['target']} s)  UNet {r['evals']['forward']}/"
              f"{r['evals']['backward']}  peak {r['peak']} GB  stages {r['stages']}  warm-up {r['warmup']:.1f} s"
              + (" (includes compiling)" if args.compile else ""), flush=True)
    # The whole app: every model a tab uses, loaded together (what `python app.py` holds after use).
    for name in APP_COMPONENTS:
        models.get(name)
    app_gb = gb(torch.cuda.memory_allocated(models.device)) if cuda else float("nan")
    print(f"whole app resident: {app_gb} GB ({', '.join(APP_COMPONENTS)})")
    compare = None
    if not args.no_compare:
        from bench import p2pz_vs_diffusers

        compare = ["--profile", profile, "--resolution", str(resolution), "--rounds", "1" if dry else "2",
                   "--steps", "10" if dry else "50"] + ([] if record else ["--no-record"])
        p2pz_vs_diffusers.main(compare)
        from bench import pipelines_vs_diffusers  # SDEdit and the ControlNet img2img path, the same way

        # 10 dry-run steps: 0.7 x 10 is whole, so both sides run the same number of SDEdit steps
        pipelines_vs_diffusers.main(["--profile", profile, "--resolution", str(resolution), "--device",
                                     str(models.device), "--rounds", "1" if dry else "2", "--steps",
                                     "10" if dry else "50"] + ([] if record else ["--no-record"]))
    from bench import p2pz_distill_speed

    distill = ["--profile", profile, "--resolution", str(resolution), "--repeat", "3" if dry else "20"]
    distill += ["--device", str(models.device)] + ([] if record else ["--no-record"])
    p2pz = next((r for r in rows if r["case"] == "pix2pix-zero"), None)
    if p2pz is not None:  # the re-edit just measured (the case's runs after its warm-up reuse the inversion)
        distill += ["--diffusion-seconds", f"{p2pz['seconds']:.4f}"]
    print("distilled pix2pix-zero generator:", flush=True)
    p2pz_distill_speed.main(distill)
    from bench import memory_format  # decides --channels-last auto (on for the device when faster)

    print("channels-last memory order:", flush=True)
    memory_format.main(["--profile", profile, "--resolution", str(resolution), "--device", str(models.device),
                        "--rounds", "1" if dry else "3"] + ([] if record else ["--no-record"]))
    elapsed = time.perf_counter() - start
    print(f"suite done in {elapsed:.0f} s on {device_name(models)}")
    if record:
        name = device_name(models)
        for r in rows:
            add_row(SECTION, HEADER, f"| {date.today()} | {name} | {profile} | {resolution} | {r['case']} "
                    f"| {r['seconds']:.3f} | {r['target']} | {r['stages']} | {r['evals']['forward']}/"
                    f"{r['evals']['backward']} | {r['resident']} | {r['peak']} | `{r['command']}` |", intro=INTRO)
        add_row(SECTION, HEADER, f"| {date.today()} | {name} | {profile} | {resolution} | whole app resident "
                f"({len(APP_COMPONENTS)} models) | - | 15 GB with one edit | - | - | {app_gb} | - "
                f"| `{command_line('bench.suite', argv)}` |", intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
