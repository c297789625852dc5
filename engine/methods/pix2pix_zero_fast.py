"""pix2pix-zero, fast: one direction distilled into a conditional GAN (Sec. 4.5, Appendix A).

The diffusion edit (engine.methods.pix2pix_zero) inverts, rebuilds and re-samples the photo with
the UNet, hundreds of evaluations per photo. The paper distils one direction ("cat -> dog") into an
image-conditional GAN trained on pairs of photos and their pix2pix-zero edits; an edit is then one
forward pass (0.018 s on an A100, ~3,800x faster). This module applies such a generator
(engine.methods.p2pz_generator; trained with `python -m engine.train.p2pz_distill`):

- `run(Pix2PixZeroFastInputs(image, checkpoint), models)` loads the checkpoint folder (checked:
  safetensors only, names and shapes against its distilled.json) and applies it at the
  resolution it was trained at, on `models.device` (fp16 on a GPU). Loaded generators are kept
  in a small cache keyed by (folder, file mtimes, device, dtype), so a re-trained checkpoint is
  picked up and the webcam's frames cost one forward pass each.
- `run_folder(...)`: the CLI's `--image FOLDER`: one edited PNG per photo, one report.json.

There is no UNet, caption, seed or step here: the generator is deterministic (z = 0).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image, ImageOps

from engine.methods import p2pz_generator as G
from engine.types import EditResult, StepCallback, StepInfo

NAME = "pix2pix-zero-fast"
TITLE = "pix2pix-zero (fast, distilled)"
ORDER = 1.5  # right after pix2pix-zero
SUMMARY = "pix2pix-zero distilled into a GAN: one direction (cat -> dog) applied in milliseconds."

DEFAULT_FOLDER = "checkpoints/distilled"
FOLDER_ENV = "DES_DISTILLED_DIR"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
CACHE_SIZE = 4


def distilled_folder(folder: Union[str, Path, None] = None) -> Path:
    """Where the app looks for distilled directions: `folder`, else $DES_DISTILLED_DIR, else
    ./checkpoints/distilled (the app's --distilled flag passes its value here)."""
    return Path(folder or os.environ.get(FOLDER_ENV) or DEFAULT_FOLDER).expanduser()


@dataclass(frozen=True)
class Pix2PixZeroFastInputs:
    image: Image.Image
    checkpoint: Union[str, Path]          # a folder with distilled.json and generator.safetensors
    resolution: Optional[int] = None      # longest side; None: the resolution it was trained at


# -- loaded generators ------------------------------------------------------------------------------
_cache: "OrderedDict[tuple, tuple[G.DistilledGenerator, G.DistilledMeta]]" = OrderedDict()
_cache_lock = threading.Lock()


def _key(folder: Path, device: torch.device, dtype: torch.dtype) -> tuple:
    stamps = tuple((folder / name).stat().st_mtime_ns for name in (G.META, G.WEIGHTS))
    return (str(folder.resolve()), stamps, str(device), str(dtype))


def load(checkpoint, device="cpu", dtype=torch.float32) -> tuple[G.DistilledGenerator, G.DistilledMeta, bool]:
    """(generator, meta, was_cached). The folder is checked every call (cheap: no weights read), so
    a checkpoint replaced on disk is reloaded and a removed one is an error, never a stale edit."""
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise ValueError(f"the checkpoint must be a folder path, got {type(checkpoint).__name__}")
    if checkpoint is None or not str(checkpoint).strip():
        raise ValueError("no distilled checkpoint was given: pick a direction or type a checkpoint folder")
    folder, _meta = G.inspect_checkpoint(str(checkpoint).strip())
    device = torch.device(device)
    key = _key(folder, device, dtype)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return (*_cache[key], True)
    generator, meta = G.load_checkpoint(folder, device=device, dtype=dtype)
    with _cache_lock:
        for old in [k for k in _cache if k[0] == key[0] and k[2:] == key[2:]]:
            del _cache[old]  # an older version of the same folder
        _cache[key] = (generator, meta)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return generator, meta, False


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def dtype_for(device: torch.device) -> torch.dtype:
    """fp16 on a GPU (the speed the paper quotes), fp32 on the CPU (fp16 convolutions are slow there)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _device_of(models) -> torch.device:
    return torch.device(getattr(models, "device", None) or "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the edit ---------------------------------------------------------------------------------------
def _photo(image) -> Image.Image:
    from engine.core.image import MAX_PIXELS, open_image, to_rgb

    if not isinstance(image, Image.Image):
        image = open_image(image)  # a path (CLI, API); None -> "upload a photo first"
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"the image is {image.width}x{image.height} pixels, more than the "
                         f"{MAX_PIXELS // 1_000_000} megapixels this studio accepts")
    return to_rgb(ImageOps.exif_transpose(image))


def _resolution(value, meta: G.DistilledMeta) -> int:
    if value is None:
        return meta.resolution
    m = meta.generator.multiple
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"resolution must be a whole number of pixels, got {value!r}")
    value = int(value)
    if not G.MIN_RESOLUTION <= value <= G.MAX_RESOLUTION or value % m:
        raise ValueError(f"resolution must be a multiple of {m} from {max(m, G.MIN_RESOLUTION)} to "
                         f"{G.MAX_RESOLUTION} for this generator, got {value}")
    return value


def describe(folder: Path, meta: G.DistilledMeta) -> str:
    """'cat → dog · 256 px · cat2dog' — how the UI lists a checkpoint."""
    return f"{meta.source} → {meta.target} · {meta.resolution} px · {folder.name}"


def run(inputs: Pix2PixZeroFastInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    start = time.perf_counter()
    image = _photo(inputs.image)
    device = _device_of(models)
    dtype = dtype_for(device)
    t = time.perf_counter()
    generator, meta, cached = load(inputs.checkpoint, device, dtype)
    _sync(device)
    load_s = time.perf_counter() - t
    resolution = _resolution(inputs.resolution, meta)
    t = time.perf_counter()
    edited = G.apply(generator, image, resolution)
    _sync(device)
    edit_s = time.perf_counter() - t
    if on_step is not None:
        on_step(StepInfo("edit", 1, 1))
    folder = Path(str(inputs.checkpoint).strip()).expanduser()
    folder = folder.parent if folder.is_file() else folder
    params = {"checkpoint": str(folder), "direction": {"source": meta.source, "target": meta.target},
              "resolution": resolution, "trained_resolution": meta.resolution, "size": list(edited.size),
              "generator": vars(meta.generator).copy(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "loaded_from_cache": cached}
    notes = [f"distilled direction {meta.source} → {meta.target} ({folder.name}, trained at {meta.resolution} px)"]
    if resolution != meta.resolution:
        notes.append(f"applied at {resolution} px, not the {meta.resolution} px it was trained at")
    seconds = {"load": round(load_s, 4), "edit": round(edit_s, 4), "total": round(time.perf_counter() - start, 4)}
    return EditResult(images=[edited], seconds=seconds, params=params, notes=notes)


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="distilled checkpoint folder (distilled.json + generator.safetensors)")
    parser.set_defaults(resolution=None)
    for action in parser._actions:
        if action.dest == "resolution":
            action.help = "longest side in pixels (default: the checkpoint's training resolution)"
        elif action.dest == "image":
            action.help = "input photo, or a folder of photos (one edited PNG each, one report.json)"


def inputs_from_args(args, image: Image.Image, open_image) -> Pix2PixZeroFastInputs:
    return Pix2PixZeroFastInputs(image=image, checkpoint=args.checkpoint, resolution=args.resolution)


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def run_folder(args, models, out: Path) -> dict:
    """`--image FOLDER`: every photo in it edited with one loaded generator; OUT/<name>.png each
    and one OUT/report.json (the usual fields; seconds summed over the photos, `files` per photo).
    Unreadable photos are skipped and named in the notes; a folder with none is a ValueError."""
    from engine.core.image import open_image
    from engine.report import safe_name, write_result

    folder = Path(args.image)
    paths = photos_in(folder)
    if not paths:
        raise ValueError(f"no photos in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, skipped, per_image, taken = [], [], [], set()
    load_s, edit_s, last = 0.0, 0.0, None
    start = time.perf_counter()
    for path in paths:
        try:
            image = open_image(path)
        except ValueError as exc:
            skipped.append(f"{path.name} skipped: {exc}")
            continue
        result = run(Pix2PixZeroFastInputs(image, args.checkpoint, args.resolution), models)
        name = safe_name(path.stem)
        while name in taken:
            name += "_"
        taken.add(name)
        result.image.save(out / f"{name}.png")
        load_s += result.seconds["load"]
        edit_s += result.seconds["edit"]
        per_image.append(result.seconds["edit"])
        files.append({"input": path.name, "output": f"{name}.png", "size": result.params["size"],
                      "seconds": result.seconds["edit"]})
        last = result
    if last is None:
        raise ValueError(f"none of the photos in {folder} could be read ({'; '.join(skipped)})")
    params = dict(last.params)
    params.pop("size", None)
    params["images"] = len(files)
    seconds = {"load": round(load_s, 4), "edit": round(edit_s, 4),
               "edit_per_image_median": round(sorted(per_image)[len(per_image) // 2], 4),
               "total": round(time.perf_counter() - start, 4)}
    summary = EditResult(images=[], seconds=seconds, params=params, notes=last.notes[:1] + skipped)
    return write_result(summary, out, NAME, args.profile, {"models": {"distilled": params["checkpoint"]},
                                                          "files": files})


def report_extra(result: EditResult) -> dict:
    """report.json's "models" for the CLI: the distilled checkpoint (no Stable Diffusion runs here)."""
    return {"models": {"distilled": result.params["checkpoint"]}}
