"""`python -m engine segment`: text or clicks -> mask.png, overlay.png and report.json.

    python -m engine segment --image IN --out DIR --text "the dog" [--points 120,80,+ 40,30,-]
        [--method grounded-sam|clipseg] [--box-threshold 0.3] [--text-threshold 0.25] [--profile tiny]

- grounded-sam (default): GroundingDINO boxes for the text, SAM masks inside them.
- clipseg: CLIPSeg's soft mask for the text (written as gray levels).
- --points: SAM clicks "x,y,+" (object) or "x,y,-" (background). With --text too, the
  click mask and the text mask are joined (union); points alone need no text.
report.json: {"method", "profile", "text", "points", "boxes": [{"box", "score", "label"}],
"message", "coverage", "seconds": {"total", ...}, "files": {...}}.

Guarded by tests/test_segment.py (test_cli_box_threshold_reaches_grounding_dino,
test_cli_negative_click_and_union_of_text_and_clicks, test_cli_writes_mask_overlay_and_report) and,
as a real `python -m engine segment` subprocess with and without --method, by
tests/test_readme_cli.py::test_readme_command_runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

from engine.core import masks as M
from engine.core import segment as S

METHODS = ("grounded-sam", "clipseg")


def parse_point(text: str) -> tuple[float, float, bool]:
    """"x,y" or "x,y,+" -> positive click; "x,y,-" -> negative click."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2:
        parts.append("+")
    if len(parts) != 3 or parts[2] not in ("+", "-", "1", "0"):
        raise argparse.ArgumentTypeError(f"a point is x,y,+ or x,y,- (got {text!r})")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point's x and y must be numbers (got {text!r})") from None
    return x, y, parts[2] in ("+", "1")


def add_cli_args(parser: argparse.ArgumentParser, common: bool = True) -> None:
    """Add the segment command's flags. common=False skips --image/--out/--profile when the
    caller's parser already has them."""
    if common:
        parser.add_argument("--image", required=True, help="the photo (PNG/JPEG)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--profile", default="sd15", help="model profile: sd15 (real) or tiny")
    parser.add_argument("--text", default="", help="what to select, e.g. 'the dog on the left'")
    parser.add_argument("--points", nargs="*", type=parse_point, default=[], metavar="X,Y,+|-",
                        help="SAM clicks in photo pixels: x,y,+ (object) or x,y,- (background)")
    # dest "segmenter", not "method": `python -m engine` keeps the command's name in args.method.
    parser.add_argument("--method", dest="segmenter", choices=METHODS, default="grounded-sam",
                        help="text segmenter (default grounded-sam)")
    parser.add_argument("--box-threshold", type=float, default=0.3,
                        help="GroundingDINO box score threshold in [0, 1] (default 0.3)")
    parser.add_argument("--text-threshold", type=float, default=0.25,
                        help="GroundingDINO token threshold in [0, 1] (default 0.25)")


def _load_photo(path: str) -> Image.Image:
    """Open a photo, apply its EXIF orientation, and make it RGB; ValueError if unreadable."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the image {path!r}: {exc}") from None


def segment(args: argparse.Namespace, models) -> dict:
    """Run the segmentation the flags ask for; write the files; return the report."""
    if not args.text.strip() and not args.points:
        raise ValueError("give --text PHRASE, --points x,y,+ ..., or both")
    photo = _load_photo(args.image)
    out = Path(args.out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    parts, boxes, messages = [], [], []

    if args.text.strip():
        t = time.perf_counter()
        if args.segmenter == "clipseg":
            parts.append(S.clipseg_mask(models.get("clipseg"), photo, args.text))
            messages.append(f"CLIPSeg mask for '{args.text.strip()}'")
        else:
            result = S.grounded_sam(models.get("grounding_dino"), models.get("sam"), photo,
                                    args.text, args.box_threshold, args.text_threshold)
            parts.append(result.mask)
            boxes = result.boxes
            messages.append(result.message)
        seconds["text"] = time.perf_counter() - t
    if args.points:
        t = time.perf_counter()
        parts.append(S.sam_mask_from_points(models.get("sam"), photo, args.points))
        messages.append(f"SAM mask for {len(args.points)} click(s)")
        seconds["points"] = time.perf_counter() - t
    mask = M.union(parts)
    seconds["total"] = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    M.to_pil(mask).save(out / "mask.png")
    M.overlay(photo, mask).save(out / "overlay.png")
    report = {
        "method": args.segmenter if args.text.strip() else "sam-points",
        "profile": getattr(args, "profile", None) or getattr(models, "profile", None),
        "text": args.text,
        "points": [[x, y, "+" if pos else "-"] for x, y, pos in args.points],
        "boxes": [b.to_dict() for b in boxes],
        "message": "; ".join(messages),
        "coverage": round(M.coverage(mask), 6),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "files": {"mask": "mask.png", "overlay": "overlay.png"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def run_cli(args: argparse.Namespace, models) -> int:
    """Entry point for `python -m engine segment`: 0 on success, 2 with one line on bad input."""
    try:
        report = segment(args, models)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['message']} -> {Path(args.out) / 'mask.png'}")
    return 0
