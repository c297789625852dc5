"""Command line: python -m engine METHOD --image IN.png --out DIR [--profile tiny] [method flags].

Runs the same `run()` the UI calls and writes DIR/edited.png, one PNG per intermediate and
DIR/report.json. A method with `run_folder` (pix2pix-zero-fast) also takes `--image FOLDER`: one
edited PNG per photo and one report.json. Bad input: one readable line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import methods
from engine.models import COMPONENTS, PROFILES, add_speed_arguments, speed_options


def _model_override(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or name not in COMPONENTS or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=ID_OR_FOLDER with NAME one of {', '.join(COMPONENTS)}")
    return name, source


def add_common(parser: argparse.ArgumentParser, needs_image: bool = True) -> None:
    parser.add_argument("--image", required=needs_image, help="input photo")
    parser.add_argument("--out", required=True, help="folder for edited.png, intermediates and report.json")
    parser.add_argument("--profile", choices=PROFILES, default="sd15",
                        help="sd15: real weights; tiny: random tiny models (offline); sd15-shape: random full-size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=512, help="longest side in pixels (multiple of 8)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--memory", choices=("gpu", "offload"), default="gpu")
    add_speed_arguments(parser)
    parser.add_argument("--model", action="append", type=_model_override, default=[], metavar="NAME=SRC",
                        help="override a model's hub id or local folder (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Diffusion Edit Studio from the command line.")
    sub = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name, module in methods.available().items():
        p = sub.add_parser(name, help=module.SUMMARY, description=module.SUMMARY)
        add_common(p)
        module.add_arguments(p)
    try:
        from engine import segment_cli
    except ImportError:
        segment_cli = None
    if segment_cli is not None:
        p = sub.add_parser("segment", help="text or click segmentation: mask.png, overlay.png, report.json")
        add_common(p)
        segment_cli.add_cli_args(p, common=False)
    return parser


def main(argv=None) -> int:
    from engine.core.image import open_image
    from engine.models import ModelCache, ModelUnavailable
    from engine.report import write_result

    args = build_parser().parse_args(argv)
    try:
        models = ModelCache(args.profile, device=args.device, memory=args.memory, overrides=dict(args.model),
                            **speed_options(args))
        if args.method == "segment":
            from engine import segment_cli

            return segment_cli.run_cli(args, models)
        module = methods.get(args.method)
        if hasattr(module, "run_folder") and Path(args.image).is_dir():  # a folder of photos, one report
            module.run_folder(args, models, Path(args.out))
            print(f"wrote {args.out}/report.json", file=sys.stderr)
            return 0
        image = open_image(args.image)  # the method's run() normalises it (one resize, not two)
        inputs = module.inputs_from_args(args, image, _open_file)
        result = module.run(inputs, models, on_step=_print_progress)
        note = models.compile_note()
        if note:
            result.notes.append(note)
        extra = module.report_extra(result) if hasattr(module, "report_extra") else {"models": models.describe()}
        write_result(result, Path(args.out), args.method, args.profile, extra)
    except (ValueError, ModelUnavailable) as exc:  # bad input, or weights not on this machine
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/edited.png", file=sys.stderr)
    return 0


def _open_file(path: str):
    """Open a side input (mask, scribble...) without resizing; methods validate sizes."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise ValueError(f"no file at {path}") from None
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{path} is not an image this studio can read") from None


def _print_progress(info) -> None:
    if info.i == info.n or info.i % 10 == 0:
        losses = "" if not info.losses else " " + " ".join(f"{k}={v:.4g}" for k, v in info.losses.items())
        print(f"[{info.stage}] {info.i}/{info.n}{losses}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
