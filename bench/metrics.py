"""The metrics the five papers report, each on PIL images (and masks: float arrays, 1 = the edited
object or region, 0 = background).

Pixel metrics
- `l1`: mean |a - b| over pixels and channels, intensities in [0, 1] (ITO Table 1, after DiffEdit).
- `ssim`, `ssim_inside_outside`: SSIM (Wang et al., 2004) with an 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, on RGB averaged over channels; the SSIM map averaged over the mask (SSIM-M)
  and over its complement (SSIM-M-bar), as iEdit's Table 1 adapts it. Computed with scikit-image.

Network metrics
- `lpips` (Zhang et al., 2018) with an optional region: both images are multiplied by the region
  mask (outside it they become 0, mid-gray in [-1, 1]) before the distance, so a change outside the
  region cannot count. `bg_lpips` is that over the background (1 - object mask): pix2pix-zero's
  BG LPIPS, whose background comes from a detector (Detic) in the paper.
- `structure_dist`: Structure Dist of pix2pix-zero (their ref. [57], Tumanyan et al., 2022): the
  self-similarity matrix S_ij = cos(k_i, k_j) of the keys of DINO-ViT's last layer (all tokens, CLS
  included, heads concatenated), for the input and for the edit; the distance between the two
  matrices. [57] writes it as a Frobenius norm; the values in pix2pix-zero's Table 1 (0.03-0.13)
  are on the scale of the mean squared entry difference, ||S_a - S_b||_F^2 / N^2, which is the
  default here (`reduction="mse"`); `reduction="frobenius"` gives the norm itself.
- CLIP (Radford et al., 2021) through `engine.core.clip` (the `clip` component, ViT-B/32 by
  default; its processor resizes to 224 px, as IIR-Net states):
  `clip_score` = 100 * cos(image, text) (IIR-Net Table 1; LayerDiffusion reports cos itself);
  `clipscore` = 100 * 2.5 * max(cos, 0) with the text prefixed "A photo depicts" (Hessel et al.,
  2021; the scale of iEdit's "CLIPScore (%)" around 65);
  `clip_acc` = whether cos(edit, target text) > cos(edit, source text) (pix2pix-zero's CLIP-Acc);
  `clip_classify`: zero-shot classification among class names (ITO's classification accuracy).
- `pickscore` (Kirstain et al., 2023) = logit_scale * cos with the PickScore model, and
  `preference`: the softmax over candidates for one prompt, i.e. the probability that PickScore
  prefers one image over the others (ITO reports this share, 0.27-0.41 over three methods).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.core import clip as C
from engine.core.masks import as_mask
from engine.core.sampling import pil_to_tensor

HESSEL_W = 2.5
HESSEL_PREFIX = "A photo depicts "
SSIM_SIGMA = 1.5


# -- helpers --------------------------------------------------------------------------------------
def _pair(a: Image.Image, b: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    if a.size != b.size:
        raise ValueError(f"the images differ in size: {a.size} and {b.size}")
    return (np.asarray(a.convert("RGB"), dtype=np.float64) / 255.0,
            np.asarray(b.convert("RGB"), dtype=np.float64) / 255.0)


def _mask(mask, size: tuple[int, int]) -> np.ndarray:
    m = as_mask(mask)
    if m.shape != (size[1], size[0]):
        raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {size[0]}x{size[1]}")
    return m.astype(np.float64)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    if total <= 0:
        return float("nan")
    return float((values * weights).sum() / total)


# -- pixel metrics --------------------------------------------------------------------------------
def l1(a: Image.Image, b: Image.Image, mask=None) -> float:
    """Mean absolute difference in [0, 1] intensities; over the mask's pixels if one is given."""
    x, y = _pair(a, b)
    diff = np.abs(x - y).mean(axis=2)
    return float(diff.mean()) if mask is None else _weighted_mean(diff, _mask(mask, a.size))


def ssim_map(a: Image.Image, b: Image.Image) -> np.ndarray:
    """The (H, W) SSIM map, Gaussian window sigma 1.5 (11x11), averaged over RGB."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b)
    if min(x.shape[:2]) < 11:
        raise ValueError("SSIM needs images of at least 11x11 pixels")
    _, full = structural_similarity(x, y, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                    sigma=SSIM_SIGMA, use_sample_covariance=False, full=True)
    return full.mean(axis=2)


def ssim(a: Image.Image, b: Image.Image, mask=None) -> float:
    """Mean SSIM; over the mask's pixels if one is given."""
    m = ssim_map(a, b)
    return float(m.mean()) if mask is None else _weighted_mean(m, _mask(mask, a.size))


def ssim_inside_outside(a: Image.Image, b: Image.Image, mask) -> tuple[float, float]:
    """(SSIM-M, SSIM-M-bar): the SSIM map averaged inside the mask and outside it (iEdit Sec. 4.1)."""
    m = ssim_map(a, b)
    w = _mask(mask, a.size)
    return _weighted_mean(m, w), _weighted_mean(m, 1.0 - w)


# -- LPIPS ----------------------------------------------------------------------------------------
@torch.no_grad()
def lpips(net, a: Image.Image, b: Image.Image, region=None) -> float:
    """LPIPS(a, b); with `region` (1 = compare), both images are zeroed outside it first."""
    if a.size != b.size:
        raise ValueError(f"the images differ in size: {a.size} and {b.size}")
    device = net.lin0.device
    x, y = pil_to_tensor(a).to(device), pil_to_tensor(b).to(device)
    if region is not None:
        m = torch.from_numpy(_mask(region, a.size)).float().to(device)[None, None]
        x, y = x * m, y * m
    return float(net(x, y)[0])


def bg_lpips(net, a: Image.Image, b: Image.Image, object_mask) -> float:
    """pix2pix-zero's BG LPIPS: LPIPS over the background, 1 - object mask."""
    return lpips(net, a, b, region=1.0 - _mask(object_mask, a.size))


# -- Structure Dist -------------------------------------------------------------------------------
@torch.no_grad()
def dino_keys(dino, images: Sequence[Image.Image], size: Optional[int] = None) -> torch.Tensor:
    """Keys of the last layer of a DINO ViT, (B, tokens, dim): images resized to size x size
    (the model's own input size by default), ImageNet-normalised. Read with a forward hook on the
    key projection, removed in `finally`."""
    from engine.core.metric_models import IMAGENET_MEAN, IMAGENET_STD, key_projection

    own = int(dino.config.image_size)
    size = int(size or own)
    device = next(dino.parameters()).device
    x = torch.cat([pil_to_tensor(im) for im in _same_size(images)]).to(device)
    x = F.interpolate((x + 1.0) / 2.0, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    captured: list[torch.Tensor] = []
    handle = key_projection(dino).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        dino(pixel_values=x.to(dino.dtype), interpolate_pos_encoding=size != own)
    finally:
        handle.remove()
    return captured[-1].float()


def _same_size(images: Sequence[Image.Image]) -> list[Image.Image]:
    size = images[0].size
    return [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """S_ij = cos(k_i, k_j) for keys (..., N, D) -> (..., N, N)."""
    k = F.normalize(keys.float(), dim=-1)
    return k @ k.transpose(-1, -2)


def structure_dist(dino, a: Image.Image, b: Image.Image, size: Optional[int] = None,
                   reduction: str = "mse") -> float:
    """Distance between the key self-similarity matrices of `a` and `b` (see the module doc)."""
    keys = dino_keys(dino, [a, b], size)
    d = self_similarity(keys[0]) - self_similarity(keys[1])
    if reduction == "mse":
        return float(d.pow(2).mean())
    if reduction == "frobenius":
        return float(torch.linalg.matrix_norm(d))
    raise ValueError(f"reduction must be 'mse' or 'frobenius', not {reduction!r}")


# -- CLIP -----------------------------------------------------------------------------------------
def clip_cosines(clip, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """(N images, T texts) cosine similarities."""
    return C.image_embeddings(clip, list(images)) @ C.text_embeddings(clip, list(texts)).T


def _texts_for(images, texts) -> list[str]:
    texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    return texts


def clip_score(clip, images: Sequence[Image.Image], texts) -> list[float]:
    """100 * cos(image, its text) (IIR-Net's "CLIP score"; divide by 100 for LayerDiffusion's)."""
    return [float(v) for v in C.clip_score(clip, list(images), texts)]


def clipscore(clip, images: Sequence[Image.Image], texts, w: float = HESSEL_W,
              prefix: str = HESSEL_PREFIX) -> list[float]:
    """CLIPScore (Hessel et al., 2021) in percent: 100 * w * max(cos(image, prefix + text), 0)."""
    texts = [prefix + t for t in _texts_for(images, texts)]
    cos = (C.image_embeddings(clip, list(images)) * C.text_embeddings(clip, texts)).sum(dim=-1)
    return [float(100.0 * w * max(v, 0.0)) for v in cos.tolist()]


def clip_acc(clip, images: Sequence[Image.Image], source_text: str, target_text: str) -> list[bool]:
    """Per image: is the edit closer to the target text than to the source text (pix2pix-zero's CLIP-Acc)?"""
    cos = clip_cosines(clip, images, [source_text, target_text])
    return [bool(t > s) for s, t in cos.tolist()]


def clip_classify(clip, images: Sequence[Image.Image], classes: Sequence[str],
                  template: str = "a photo of a {}.") -> list[str]:
    """Zero-shot CLIP classification: the class whose prompt is closest to each image."""
    if len(classes) < 2:
        raise ValueError("classification needs at least two class names")
    cos = clip_cosines(clip, images, [template.format(c) for c in classes])
    return [classes[i] for i in cos.argmax(dim=1).tolist()]


# -- PickScore ------------------------------------------------------------------------------------
@torch.no_grad()
def pickscore(pick, images: Sequence[Image.Image], texts) -> list[float]:
    """PickScore = logit_scale * cos(image, text) with the PickScore CLIP model."""
    texts = _texts_for(images, texts)
    cos = (C.image_embeddings(pick, list(images)) * C.text_embeddings(pick, texts)).sum(dim=-1)
    return [float(v) for v in (pick.model.logit_scale.exp().float().cpu() * cos.cpu()).tolist()]


def preference(scores: Sequence[float]) -> list[float]:
    """softmax over the candidates' scores for one prompt: each one's share of PickScore's preference."""
    return [float(v) for v in torch.softmax(torch.tensor(list(scores), dtype=torch.float64), dim=0).tolist()]
