"""Text and click segmentation: Grounded-SAM (GroundingDINO boxes -> SAM masks), SAM clicks, CLIPSeg.

All three run on transformers' own classes (`GroundingDinoForObjectDetection`, `SamModel`,
`CLIPSegForImageSegmentation`); the loaders read a hub id or a local folder, so the tiny
random models of `engine.tiny.segment` travel the same path as the real weights.

Masks come back as float32 numpy arrays (H, W) of the photo's size: {0, 1} for SAM, soft
[0, 1] for CLIPSeg. Bad input raises `ValueError` with a message for the user; a phrase
that matches nothing is not an error but an empty mask and a message.

SAM's image encoder is the expensive part; its output is cached per photo (sha1 of the
pixels + size, per model) in a small locked LRU, so a new click on the same photo runs
only the prompt encoder and mask decoder.

Mechanisms and their guarding tests (tests/test_segment.py; breakages in tests/mutants/m_segment.py):
- Grounded-SAM: SAM's box prompts are GroundingDINO's boxes for the phrase, moved into SAM's
  resized input frame, and the mask is the union of their masks:
  test_grounded_sam_prompts_sam_with_grounding_dinos_boxes,
  test_mask_of_several_boxes_is_the_union_of_their_masks.
- The box threshold keeps exactly the boxes scoring above it, also through grounded_sam:
  test_grounded_sam_box_threshold_keeps_exactly_the_boxes_above_it,
  test_box_threshold_zero_finds_boxes_and_one_finds_none.
- SAM clicks: a negative click reaches SAM as label 0 and changes its answer:
  test_negative_clicks_reach_sam_as_background_labels.
- CLIPSeg: the mask is sigmoid(logits), resized (not stretched to [0, 1]):
  test_clipseg_mask_is_the_sigmoid_of_its_logits.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from engine.core.bundle import ModelBundle, load_bundle

DEFAULT_GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM = "facebook/sam-vit-base"
DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"
MAX_BOXES = 16  # Grounded-SAM keeps at most this many boxes (highest scores first)

Point = Union[tuple[float, float], tuple[float, float, bool]]


# -- bundles and loaders ----------------------------------------------------------------

Segmenter = ModelBundle  # what each loader returns: a model and its processor


def load_grounding_dino(source: str, device: torch.device, dtype: torch.dtype) -> Segmenter:
    """GroundingDINO for open-vocabulary boxes, from a hub id or a local folder."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    return load_bundle(GroundingDinoForObjectDetection, GroundingDinoProcessor, source, device, dtype)


def load_sam(source: str, device: torch.device, dtype: torch.dtype) -> Segmenter:
    """Segment Anything (any size: vit-base, -large, -huge), from a hub id or a local folder."""
    from transformers import SamModel, SamProcessor

    return load_bundle(SamModel, SamProcessor, source, device, dtype)


def load_clipseg(source: str, device: torch.device, dtype: torch.dtype) -> Segmenter:
    """CLIPSeg for soft text-prompted masks, from a hub id or a local folder."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    return load_bundle(CLIPSegForImageSegmentation, CLIPSegProcessor, source, device, dtype)


# -- results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """A detected box in the photo's pixel coordinates, with its score and matched words."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    label: str

    def to_dict(self) -> dict:
        return {"box": [round(v, 2) for v in (self.x0, self.y0, self.x1, self.y1)],
                "score": round(self.score, 4), "label": self.label}


@dataclass
class SegmentResult:
    """A mask (float32 HxW) with the boxes that made it and a message for the user."""

    mask: np.ndarray
    boxes: list[Box] = field(default_factory=list)
    message: str = ""


# -- validation helpers -----------------------------------------------------------------

def _rgb(image) -> Image.Image:
    """The photo as an RGB PIL image (PIL images or uint8 HxWx3 arrays)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a photo (PIL image), got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError("the photo is empty (0 pixels wide or high)")
    return image.convert("RGB")


def _phrase(phrase: str) -> str:
    """Strip the phrase and refuse empty ones."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError("type what to select, e.g. 'the dog' (the phrase is empty)")
    return " ".join(phrase.split())


def _threshold(value: float, name: str) -> float:
    """A threshold must be a number in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


def _points(points: Sequence[Point], size: tuple[int, int]) -> tuple[list, list]:
    """Validate clicks (x, y[, positive]) inside a photo of size (w, h); -> coords, labels."""
    if not points:
        raise ValueError("click on the photo at least once to select an object (no points given)")
    w, h = size
    coords, labels = [], []
    for p in points:
        if len(p) not in (2, 3):
            raise ValueError(f"a click is (x, y) or (x, y, positive), got {p!r}")
        x, y = float(p[0]), float(p[1])
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"click at ({p[0]:g}, {p[1]:g}) is outside the {w}x{h} photo")
        coords.append([x, y])
        labels.append(1 if (len(p) == 2 or bool(p[2])) else 0)
    if 1 not in labels:
        raise ValueError("add at least one positive click on the object (only negative clicks given)")
    return coords, labels


def _to(batch, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a processor's output to the model: floating tensors also take the model's dtype."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


# -- GroundingDINO ------------------------------------------------------------------------

def detect_boxes(gdino: Segmenter, image: Image.Image, phrase: str, box_threshold: float = 0.3,
                 text_threshold: float = 0.25) -> list[Box]:
    """Boxes for `phrase` in pixel coordinates of `image`, highest score first.

    GroundingDINO expects lower-case text ending with "."; a box is kept when its best token
    probability exceeds box_threshold, and its label lists the tokens above text_threshold.
    """
    image = _rgb(image)
    text = _phrase(phrase).lower()
    text = text if text.endswith(".") else text + "."
    box_threshold = _threshold(box_threshold, "box threshold")
    text_threshold = _threshold(text_threshold, "text threshold")

    proc, model = gdino.processor, gdino.model
    max_len = int(getattr(model.config, "max_text_len", 256))
    inputs = proc(images=image, text=text, return_tensors="pt", truncation=True, max_length=max_len)
    inputs = _to(inputs, gdino.device, gdino.dtype)
    with torch.inference_mode():
        outputs = model(**inputs)
    outputs.logits = outputs.logits.float()
    outputs.pred_boxes = outputs.pred_boxes.float()
    result = proc.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
        target_sizes=[(image.height, image.width)])[0]

    specials = set(getattr(proc.tokenizer, "all_special_tokens", []))
    boxes = []
    for (x0, y0, x1, y1), score, label in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                              result["text_labels"]):
        # Clip to the photo; clean the label of special tokens and the phrase separator.
        x0, x1 = sorted((min(max(x0, 0.0), image.width), min(max(x1, 0.0), image.width)))
        y0, y1 = sorted((min(max(y0, 0.0), image.height), min(max(y1, 0.0), image.height)))
        words = [t for t in label.replace(".", " ").split() if t not in specials]
        boxes.append(Box(x0, y0, x1, y1, float(score), " ".join(words) or text.rstrip(".")))
    boxes.sort(key=lambda b: b.score, reverse=True)
    return boxes


# -- SAM: image embedding cache -----------------------------------------------------------

@dataclass
class _Embedded:
    """SAM's image embedding of one photo, with the sizes needed to place prompts and masks."""

    embeddings: torch.Tensor
    original_size: tuple[int, int]  # (h, w) of the photo
    reshaped_size: tuple[int, int]  # (h, w) after resizing the longest edge, before padding


class EmbeddingCache:
    """A small thread-safe LRU of SAM image embeddings keyed by (model, photo hash)."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max(1, int(max_entries))
        self._items: OrderedDict[tuple, _Embedded] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Optional[_Embedded]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: tuple, item: _Embedded) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# The one piece of shared state: bounded and locked (see EmbeddingCache).
_EMBEDDINGS = EmbeddingCache(8)


def photo_key(image: Image.Image) -> str:
    """sha1 of the photo's RGB bytes and size: the same pixels give the same key."""
    rgb = _rgb(image)
    digest = hashlib.sha1(rgb.tobytes())
    digest.update(f"{rgb.width}x{rgb.height}".encode())
    return digest.hexdigest()


def _embed(sam: Segmenter, image: Image.Image, cache: Optional[EmbeddingCache]) -> _Embedded:
    """SAM's image embedding of `image`, from the cache when this model has seen the photo."""
    cache = _EMBEDDINGS if cache is None else cache
    # Keyed by model too: sam-vit-base and sam-vit-large embed the same photo differently.
    key = (id(sam.model), sam.source, photo_key(image))
    item = cache.get(key)
    if item is not None:
        if item.embeddings.device != sam.device:  # stored on the CPU (DES_CACHE_ON_CPU=1, ZeroGPU)
            item = _Embedded(item.embeddings.to(sam.device), item.original_size, item.reshaped_size)
        return item
    inputs = sam.processor(images=image, return_tensors="pt")
    pixels = inputs["pixel_values"].to(device=sam.device, dtype=sam.dtype)
    with torch.inference_mode():
        embeddings = sam.model.get_image_embeddings(pixels)
    item = _Embedded(embeddings, tuple(inputs["original_sizes"][0].tolist()),
                     tuple(inputs["reshaped_input_sizes"][0].tolist()))
    # On ZeroGPU no CUDA tensor may outlive a call, so the cache keeps a CPU copy there.
    on_cpu = os.environ.get("DES_CACHE_ON_CPU") == "1"
    cache.put(key, _Embedded(embeddings.cpu(), item.original_size, item.reshaped_size) if on_cpu else item)
    return item


def _scale(coords: list, emb: _Embedded) -> torch.Tensor:
    """Photo pixel coordinates -> SAM input coordinates (longest edge resized, as SAM's processor)."""
    (oh, ow), (rh, rw) = emb.original_size, emb.reshaped_size
    t = torch.tensor(coords, dtype=torch.float32)
    t[..., 0::2] *= rw / ow  # x coordinates (points: x; boxes: x0, x1)
    t[..., 1::2] *= rh / oh  # y coordinates
    return t


def _decode(sam: Segmenter, emb: _Embedded, low_res: torch.Tensor) -> np.ndarray:
    """Low-resolution mask logits (1, n, h, w) -> union of the binary masks at the photo size."""
    masks = sam.processor.post_process_masks(
        [low_res.float().cpu()], [list(emb.original_size)], [list(emb.reshaped_size)])[0]
    return masks[0].any(dim=0).numpy().astype(np.float32)


def sam_masks_from_boxes(sam: Segmenter, image: Image.Image, boxes: Sequence[Box],
                         embedding_cache: Optional[EmbeddingCache] = None) -> np.ndarray:
    """Union of SAM's masks for each box (per box, the multimask output with the best IoU)."""
    image = _rgb(image)
    if not boxes:
        return np.zeros((image.height, image.width), np.float32)
    emb = _embed(sam, image, embedding_cache)
    coords = [[b.x0, b.y0, b.x1, b.y1] for b in boxes]
    input_boxes = _scale(coords, emb)[None].to(device=sam.device, dtype=sam.dtype)  # (1, n, 4)
    with torch.inference_mode():
        out = sam.model(image_embeddings=emb.embeddings, input_boxes=input_boxes,
                        multimask_output=True)
    # pred_masks (1, n, 3, h, w), iou_scores (1, n, 3): keep each box's best-scored mask.
    best = out.iou_scores[0].argmax(dim=-1)
    chosen = out.pred_masks[0, torch.arange(len(boxes), device=best.device), best]
    return _decode(sam, emb, chosen[None])


def sam_mask_from_points(sam: Segmenter, image: Image.Image, points: Sequence[Point],
                         embedding_cache: Optional[EmbeddingCache] = None) -> np.ndarray:
    """SAM mask for clicks (x, y, positive) in photo pixels; positive=False marks background.

    One click is ambiguous (part or whole?), so SAM gives three masks and the best-scored one
    is kept; with several clicks SAM's single-mask output is used, as its authors advise.
    """
    image = _rgb(image)
    coords, labels = _points(points, image.size)
    emb = _embed(sam, image, embedding_cache)
    input_points = _scale(coords, emb)[None, None].to(device=sam.device, dtype=sam.dtype)
    input_labels = torch.tensor([[labels]], dtype=torch.long, device=sam.device)
    multimask = len(coords) == 1
    with torch.inference_mode():
        out = sam.model(image_embeddings=emb.embeddings, input_points=input_points,
                        input_labels=input_labels, multimask_output=multimask)
    best = int(out.iou_scores[0, 0].argmax())
    return _decode(sam, emb, out.pred_masks[0, 0, best][None, None])


# -- Grounded-SAM and CLIPSeg -------------------------------------------------------------

def grounded_sam(gdino: Segmenter, sam: Segmenter, image: Image.Image, phrase: str,
                 box_threshold: float = 0.3, text_threshold: float = 0.25,
                 embedding_cache: Optional[EmbeddingCache] = None,
                 max_boxes: int = MAX_BOXES) -> SegmentResult:
    """Text -> mask: GroundingDINO boxes for `phrase`, SAM masks inside them, their union.

    Nothing found is a normal outcome: an all-zero mask and a message saying what to try.
    """
    image = _rgb(image)
    phrase = _phrase(phrase)
    boxes = detect_boxes(gdino, image, phrase, box_threshold, text_threshold)[:max(1, int(max_boxes))]
    if not boxes:
        return SegmentResult(np.zeros((image.height, image.width), np.float32), [],
                             f"nothing matching '{phrase}' was found; lower the box threshold "
                             f"(now {float(box_threshold):g}) or draw the mask")
    mask = sam_masks_from_boxes(sam, image, boxes, embedding_cache)
    found = f"{len(boxes)} region{'s' if len(boxes) > 1 else ''} matching '{phrase}' " \
            f"(best score {boxes[0].score:.2f})"
    if not mask.any():
        return SegmentResult(mask, boxes, f"found {found} but SAM's mask is empty; "
                                          "click on the object or draw the mask")
    return SegmentResult(mask, boxes, f"found {found}")


def clipseg_mask(clipseg: Segmenter, image: Image.Image, phrase: str) -> np.ndarray:
    """CLIPSeg's soft mask for `phrase`: sigmoid of its logits, upsampled to the photo's size."""
    image = _rgb(image)
    phrase = _phrase(phrase)
    max_len = int(clipseg.model.config.text_config.max_position_embeddings)
    inputs = clipseg.processor(text=[phrase], images=[image], padding=True, truncation=True,
                               max_length=max_len, return_tensors="pt")
    inputs = _to(inputs, clipseg.device, clipseg.dtype)
    with torch.inference_mode():
        logits = clipseg.model(**inputs).logits
    logits = logits.float().reshape(1, 1, *logits.shape[-2:])  # (1, 1, h, w) whatever the batch
    soft = torch.nn.functional.interpolate(torch.sigmoid(logits), size=(image.height, image.width),
                                           mode="bilinear", align_corners=False)
    return soft[0, 0].clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
