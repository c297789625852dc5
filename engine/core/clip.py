"""CLIP (Radford et al., 2021): image and text embeddings, the CLIP distance and CLIPScore.

Used by iEdit (its global and localised CLIP losses, Eq. 5 and 11, and the pseudo-target
retrieval of Sec. 3.1) and by the evaluation scripts (CLIPScore).

- `load_clip(source, device, dtype)` reads a hub id or a local folder (CLIPModel + CLIPProcessor)
  and returns a frozen `ClipBundle`; the tiny profile's folder comes from `engine.tiny.clip`.
- `image_embeddings` / `text_embeddings` return L2-normalised embeddings without gradients.
- `embed_pixels` is the differentiable path for training losses: image tensors in [-1, 1]
  are resized and normalised in torch (the same steps as CLIP's image processor).
- `clip_distance` is D_CLIP = 1 - cos (StyleCLIP's CLIP loss, used by iEdit Eq. 5 and 11).
- `clip_score` is 100 * cos(image, text), the "CLIPScore (%)" iEdit reports (Sec. 4.1).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from engine.core.bundle import ModelBundle, load_bundle

# CLIP's own normalisation, used when a processor does not state one.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipBundle(ModelBundle):
    """A loaded CLIPModel and its CLIPProcessor."""

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of CLIP's input crop."""
        ip = self.processor.image_processor
        crop = getattr(ip, "crop_size", None) or {}
        if isinstance(crop, dict) and "height" in crop:
            return int(crop["height"]), int(crop["width"])
        size = int(self.model.config.vision_config.image_size)
        return size, size


def load_clip(source: str, device: torch.device, dtype: torch.dtype) -> ClipBundle:
    """CLIPModel + CLIPProcessor from a hub id or a local folder, frozen, on `device` in `dtype`."""
    from transformers import CLIPModel, CLIPProcessor

    return load_bundle(CLIPModel, CLIPProcessor, source, device, dtype, bundle_cls=ClipBundle)


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# -- embeddings (no gradients) ----------------------------------------------------------------
@torch.no_grad()
def image_embeddings(clip: ClipBundle, images: Sequence[Image.Image]) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) in float32, via CLIP's own image processor."""
    if not images:
        raise ValueError("no images to embed")
    pixels = clip.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    feats = _features(clip.model.get_image_features(pixel_values=pixels.to(clip.device, clip.dtype)))
    return F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def text_embeddings(clip: ClipBundle, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) in float32."""
    return F.normalize(_text_features(clip, texts).float(), dim=-1)


def _text_features(clip: ClipBundle, texts: Sequence[str]) -> torch.Tensor:
    if not texts:
        raise ValueError("no texts to embed")
    max_len = int(clip.model.config.text_config.max_position_embeddings)
    tokens = clip.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len,
                                      return_tensors="pt")
    tokens = {k: v.to(clip.device) for k, v in tokens.items()}
    return _features(clip.model.get_text_features(**tokens))


# -- differentiable path for losses -----------------------------------------------------------
def preprocess_pixels(clip: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> CLIP's pixel_values, differentiably: shortest side
    resized to the crop size (bicubic), centre crop, CLIP normalisation."""
    ch, cw = clip.image_size
    h, w = x.shape[-2:]
    scale = max(ch / h, cw / w)
    nh, nw = max(ch, round(h * scale)), max(cw, round(w * scale))
    x = (x.float() + 1.0) / 2.0
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - ch) // 2, (nw - cw) // 2
    x = x[..., top:top + ch, left:left + cw]
    ip = clip.processor.image_processor
    mean = torch.tensor(getattr(ip, "image_mean", None) or CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(getattr(ip, "image_std", None) or CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def embed_pixels(clip: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings of tensors in [-1, 1], with gradients flowing to `x`."""
    pixels = preprocess_pixels(clip, x).to(clip.device, clip.dtype)
    return F.normalize(_features(clip.model.get_image_features(pixel_values=pixels)).float(), dim=-1)


def clip_distance(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """D_CLIP = 1 - cos(E_I, E_T) per row (StyleCLIP; iEdit Eq. 5 and 11). Inputs normalised."""
    return 1.0 - (image_emb * text_emb.to(image_emb)).sum(dim=-1)


# -- metric ---------------------------------------------------------------------------------------
@torch.no_grad()
def clip_score(clip: ClipBundle, images: Sequence[Image.Image], texts: Sequence[str] | str) -> list[float]:
    """CLIPScore (%) as iEdit reports it: 100 * cosine similarity of each image with its text
    (one text for all images, or one per image)."""
    texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    img = image_embeddings(clip, images)
    txt = text_embeddings(clip, texts)
    return [round(float(v), 4) for v in (100.0 * (img * txt).sum(dim=-1)).tolist()]


def retrieval_query(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """iEdit Sec. 3.1: the mean of the (normalised) source-image and edit-prompt embeddings,
    normalised again, as the query for nearest-neighbour retrieval."""
    return F.normalize((image_emb + text_emb) / 2.0, dim=-1)
