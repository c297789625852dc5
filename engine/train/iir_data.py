"""Training data for IIR-Net: images with captions, from a folder or a dataset on the hub.

Folder layouts (checked up front; problems are reported all at once as a DataError):
- `metadata.jsonl` with one JSON object per line: {"file_name": "a.png", "text": "a cat"};
- otherwise every image (png, jpg, jpeg, webp, bmp; subfolders included) with a `.txt` caption
  of the same name beside it ("cat.png" + "cat.txt").
A dataset name (anything that is not an existing path, e.g. "user/captioned-birds") is read with
the `datasets` library (not a dependency of the studio: `pip install datasets`); the image
column is the one of type Image and the caption column the first of text/caption/... found.

Images are centre-cropped to a square and resized to the training resolution.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt", "sentence", "sentences", "description")


class DataError(ValueError):
    """The training data cannot be used; the message says why and what to do."""


class CaptionedImages:
    """An indexable set of (PIL RGB image, caption)."""

    def __init__(self, items: list[tuple[Path, str]] | None = None, dataset=None, image_column: str = "",
                 text_column: str = "", description: str = ""):
        self.items = items
        self.dataset = dataset
        self.image_column = image_column
        self.text_column = text_column
        self.description = description

    def __len__(self) -> int:
        return len(self.items) if self.items is not None else len(self.dataset)

    def caption(self, i: int) -> str:
        if self.items is not None:
            return self.items[i][1]
        text = self.dataset[i][self.text_column]
        return str(text[0] if isinstance(text, (list, tuple)) and text else text)

    def image(self, i: int) -> Image.Image:
        if self.items is not None:
            path = self.items[i][0]
            try:
                with Image.open(path) as img:
                    return img.convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read training image {path}: {exc}") from None
        return self.dataset[i][self.image_column].convert("RGB")


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre crop to a square, resize to resolution x resolution."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution),
                                                                   Image.Resampling.BICUBIC)


def open_data(source: str, split: str = "train") -> CaptionedImages:
    """A folder of captioned images, or a dataset name (see the module docstring)."""
    if not source or not str(source).strip():
        raise DataError("--data is empty: give a folder of images with captions or a dataset name")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"{path} is a file; --data wants a folder of images with captions")
        return _folder(path)
    if str(source).startswith((".", "/", "~")) or "\\" in str(source):
        raise DataError(f"no folder at {source}")
    return _hub_dataset(str(source), split)


def _folder(folder: Path) -> CaptionedImages:
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        items = _from_metadata(folder, metadata)
    else:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items, missing = [], []
        for p in images:
            txt = p.with_suffix(".txt")
            text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
            if not text:
                missing.append(p.relative_to(folder).as_posix())
            items.append((p, " ".join(text.split())))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{len(missing)} image(s) in {folder} have no caption: {shown}. Put the caption "
                            "in a .txt file of the same name beside each image, or list file_name/text "
                            "pairs in metadata.jsonl")
    return CaptionedImages(items=items, description=f"folder {folder} ({len(items)} images)")


def _from_metadata(folder: Path, metadata: Path) -> list[tuple[Path, str]]:
    items, problems = [], []
    for n, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            problems.append(f"line {n}: expected {{\"file_name\": ..., \"text\": ...}}")
            continue
        path = folder / str(name)
        if not path.is_file():
            problems.append(f"line {n}: no image {name}")
        elif not str(text).strip():
            problems.append(f"line {n}: empty caption for {name}")
        else:
            items.append((path, " ".join(str(text).split())))
    if problems:
        raise DataError(f"{metadata} has problems: " + "; ".join(problems[:5])
                        + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""))
    if not items:
        raise DataError(f"{metadata} lists no images")
    return items


def _hub_dataset(name: str, split: str) -> CaptionedImages:
    try:
        import datasets  # optional: only users with hub access train from a named dataset
    except ImportError:
        raise DataError(f"{name!r} is not a folder here, and reading it as a dataset needs the "
                        "`datasets` library, which is not installed: run `pip install datasets` "
                        "(and have access to the model hub), or pass a local folder") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, unknown name, missing split
        raise DataError(f"could not load the dataset {name!r} (split {split!r}): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    image_column = _image_column(ds)
    text_column = next((c for c in CAPTION_COLUMNS if c in ds.column_names), None)
    if image_column is None or text_column is None:
        raise DataError(f"dataset {name!r} needs an image column and a caption column "
                        f"({'/'.join(CAPTION_COLUMNS)}); it has {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} split {split!r} is empty")
    return CaptionedImages(dataset=ds, image_column=image_column, text_column=text_column,
                           description=f"dataset {name} [{split}] ({len(ds)} images)")


def _image_column(ds) -> Optional[str]:
    for column, feature in ds.features.items():
        if type(feature).__name__ == "Image":
            return column
    return "image" if "image" in ds.column_names else None
