"""Evaluation tasks (which edit, which metrics, which paper table) and the photos they run on.

A task gives the default words and prompts; a `prompts.json` in the photo folder may override any
of them per photo: {"cat1.png": {"source": "cat", "target": "dog", "source_prompt": "...",
"target_prompt": "...", "caption": "...", "classes": ["cat", "dog", "fox"], "background": "..."}}. Object masks
(white = the edited object / region, black = background) are read from `--masks DIR` or
`FOLDER/masks/`, one per photo with the same file stem; metrics that need one and find none get
a CLIPSeg mask of the source word (noted in the report).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class MetricInfo:
    label: str             # the column title, as the paper prints it
    better: str            # "higher", "lower" or "" (neither: SSIM-M is a trade-off in iEdit)
    needs: tuple = ()      # model components
    mask: bool = False     # needs the object mask
    percent: bool = False  # per-image 0/100 (accuracies) or a percentage


METRICS: dict[str, MetricInfo] = {
    "clip_acc": MetricInfo("CLIP-Acc (%)", "higher", ("clip",), percent=True),
    "bg_lpips": MetricInfo("BG LPIPS", "lower", ("lpips",), mask=True),
    "structure_dist": MetricInfo("Structure Dist", "lower", ("dino",)),
    "lpips": MetricInfo("LPIPS", "lower", ("lpips",)),
    "clip_score": MetricInfo("CLIP score (100·cos)", "higher", ("clip",)),
    "clipscore": MetricInfo("CLIPScore (%)", "higher", ("clip",), percent=True),
    "ssim_m": MetricInfo("SSIM-M (%)", "", mask=True, percent=True),
    "ssim_mbar": MetricInfo("SSIM-M̄ (%)", "higher", mask=True, percent=True),
    "l1": MetricInfo("L1 distance", "lower"),
    "class_acc_new": MetricInfo("Classification acc. as new class (%)", "higher", ("clip",), percent=True),
    "class_acc_orig": MetricInfo("Classification acc. as original class (%)", "lower", ("clip",), percent=True),
    "pickscore": MetricInfo("PickScore (logit)", "higher", ("pickscore",)),
    "pick_preference": MetricInfo("PickScore preference", "higher", ("pickscore",)),
    "clip_cos": MetricInfo("CLIP score (cos)", "higher", ("clip",)),
}


@dataclass(frozen=True)
class Task:
    name: str
    paper: str                 # the method whose paper table this task reproduces
    source: str                # source word (what is in the photo)
    target: str                # target word or phrase
    source_prompt: str         # a caption naming the source word
    target_prompt: str         # the same caption with the word swapped (the baselines' prompt)
    metrics: tuple
    classes: tuple = ()        # class names for CLIP classification (ITO)
    about: str = ""
    background: str = ""       # LayerDiffusion's T_b when the target text names no place


_P2PZ = ("clip_acc", "bg_lpips", "structure_dist")
_IIR = ("lpips", "clip_score")
_IEDIT = ("clipscore", "ssim_m", "ssim_mbar")
_IMAGENET = ("tabby cat", "dog", "fox", "lion", "tiger", "horse", "zebra", "rabbit", "bird", "car")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cat-dog", "pix2pix-zero", "cat", "dog", "a photo of a cat", "a photo of a dog", _P2PZ,
         about="pix2pix-zero Table 1: photos of cats (LAION-5B in the paper)"),
    Task("horse-zebra", "pix2pix-zero", "horse", "zebra", "a photo of a horse", "a photo of a zebra", _P2PZ,
         about="pix2pix-zero Table 1: photos of horses"),
    Task("cat-glasses", "pix2pix-zero", "cat", "cat wearing glasses", "a photo of a cat",
         "a photo of a cat wearing glasses", ("clip_acc", "structure_dist"),
         about="pix2pix-zero Table 1: photos of cats; no BG LPIPS (the edit is on the object)"),
    Task("sketch-oil-pastel", "pix2pix-zero", "sketch", "oil pastel", "a sketch", "an oil pastel",
         ("clip_acc", "structure_dist"), about="pix2pix-zero Table 1: hand-drawn sketches; a global edit"),
    Task("cub", "iir-net", "bird", "bird with a red crown", "a photo of a bird", "a photo of a bird with a red crown",
         _IIR, about="IIR-Net Table 1, CUB: 150 test images, one edit text each (give them in prompts.json)"),
    Task("outdoor-scenes", "iir-net", "grassland", "snowy landscape", "a photo of a grassland",
         "a photo of a snowy landscape", _IIR, about="IIR-Net Table 1, Outdoor Scenes (150 images)"),
    Task("coco", "iir-net", "cat", "dog", "a photo of a cat", "a photo of a dog", _IIR,
         about="IIR-Net Table 1, COCO (150 images; per-image texts in prompts.json)"),
    Task("iedit-real", "iedit", "cat", "tiger", "a photograph of a cat", "a photograph of a tiger", _IEDIT,
         about="iEdit Table 1(b): real images with ground-truth masks of the edited region"),
    Task("iedit-generated", "iedit", "cat", "tiger", "a photograph of a cat", "a photograph of a tiger", _IEDIT,
         about="iEdit Table 1(a): generated images with ground-truth masks"),
    Task("imagenet-class", "ito", "tabby cat", "dog", "a photo of a tabby cat", "a photo of a dog",
         ("l1", "class_acc_new", "class_acc_orig", "pickscore", "pick_preference"), _IMAGENET,
         about="ITO Table 1 (DiffEdit's ImageNet protocol): change the object's class"),
    Task("tedbench", "layer-diffusion", "dog", "dog jumping", "a photo of a dog", "a photo of a dog jumping",
         ("clip_cos",), about="LayerDiffusion Table 1: TEdBench photos and texts (edits in place)",
         background="in the same scene"),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class Case:
    """One photo of the evaluation with its words, prompts and (optional) object mask."""

    name: str
    path: Path
    image: Image.Image
    source: str
    target: str
    source_prompt: str
    target_prompt: str
    caption: Optional[str] = None
    classes: tuple = ()
    background: str = ""                    # T_b for LayerDiffusion
    mask: Optional[np.ndarray] = None       # (H, W) in [0, 1], 1 = the object / edited region
    mask_origin: Optional[str] = None       # "file" or "clipseg"
    extra: dict = field(default_factory=dict)


def list_photos(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no folder of photos at {folder}")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not photos:
        raise ValueError(f"{folder} holds no photos ({', '.join(IMAGE_EXTS)})")
    return photos


def _read_prompts(folder: Path) -> dict:
    path = folder / "prompts.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} must map file names to objects like {{\"target_prompt\": \"...\"}}")
    return data


def _find_mask(masks_dir: Optional[Path], stem: str) -> Optional[Path]:
    if masks_dir is None or not masks_dir.is_dir():
        return None
    for ext in IMAGE_EXTS:
        path = masks_dir / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def load_cases(folder, task: Task, resolution: int = 512, limit: Optional[int] = None,
               masks_dir=None) -> list[Case]:
    """The photos of `folder` (sorted by name, the first `limit`) as Cases, loaded the way the
    methods load them (longest side `resolution`, sides a multiple of 8)."""
    from engine.core.image import load_image
    from engine.core.masks import mask_from_image

    folder = Path(folder)
    photos = list_photos(folder)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        photos = photos[:limit]
    prompts = _read_prompts(folder)
    masks_dir = Path(masks_dir) if masks_dir else folder / "masks"
    cases = []
    for path in photos:
        over = prompts.get(path.name, prompts.get(path.stem, {}))
        unknown = set(over) - {"source", "target", "source_prompt", "target_prompt", "caption", "classes",
                               "background"}
        if unknown:
            raise ValueError(f"prompts.json, {path.name}: unknown key(s) {', '.join(sorted(unknown))}")
        image = load_image(path, resolution)
        case = Case(path.stem, path, image, task.source, task.target, task.source_prompt, task.target_prompt,
                    classes=tuple(task.classes), background=task.background)
        case = replace(case, **{k: (tuple(v) if k == "classes" else v) for k, v in over.items()})
        mask_path = _find_mask(masks_dir, path.stem)
        if mask_path is not None:
            with Image.open(mask_path) as m:
                case.mask = mask_from_image(m, image.size)
            case.mask_origin = "file"
        cases.append(case)
    return cases
