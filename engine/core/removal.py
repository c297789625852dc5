"""IIR-Net's image information removal module R(x0) (Zhang et al., IIR-Net, Sec. 3.2, Eq. 4-7).

R erases what the edit may change so a ControlNet that sees the photo cannot just copy it:
- colour (Eq. 4): x'_0 = rgb2gray(x * m) + x * (1 - m), m the region-of-interest mask;
- texture (Eq. 5-6): DDPM forward noise of level k on x'_0, in closed form
  x'_k = sqrt(abar_k) x'_0 + sqrt(1 - abar_k) eps, with abar_k = prod_{i<=k} (1 - beta_i) of
  Stable Diffusion's own beta schedule, so k runs from 0 (no noise) to K = 1000 (pure noise).
  The noise is applied inside the RoI only: the paper uses it "to eliminate most information
  from the target region, leaving only the structural prior" (Sec. 1), and the text-irrelevant
  content must stay readable (outside the RoI x'_k equals the input for every k);
- structure (Eq. 7): R(x0) = [x'_k, C(x0)], the Canny edges of the original photo as a
  fourth channel.

Tensor conventions: images are (B, 3, H, W) in [-1, 1] (the space the DDPM noise is defined
in); masks (B or 1, 1, H, W) in [0, 1]; edges (B or 1, 1, H, W) in {0, 1}. The 4-channel
condition keeps x'_k unclamped in [-1, 1]-space and the edges in [0, 1]; the training script
and the method share these functions, so a trained ControlNet sees the same layout.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

from engine.core.conditions import canny

MAX_NOISE = 1000  # K: the number of DDPM steps in SD1.5's schedule (num_train_timesteps)
CONDITION_CHANNELS = 4  # 3 for x'_k, 1 for C(x0) (Sec. 4.1: "3 channels for RGB ... 1 for the edge map")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of rgb2gray

NoiseLevel = Union[int, torch.Tensor]


def rgb2gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of (B, 3, H, W) images, repeated on 3 channels (a gray RGB image)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def remove_colour(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: x'_0 = rgb2gray(x * m) + x * (1 - m) (gray is linear, so gray(x * m) = m * gray(x))."""
    m = mask.to(x.dtype)
    return m * rgb2gray(x) + x * (1 - m)


def alpha_bar_k(alphas_cumprod: torch.Tensor, k: NoiseLevel, batch: int) -> torch.Tensor:
    """abar_k = prod_{i=1..k} (1 - beta_i) per sample, shape (batch,); abar_0 = 1 (no noise).

    `alphas_cumprod[j]` is the product up to the 0-based step j, i.e. abar_{j+1}.
    """
    k = torch.as_tensor(k, dtype=torch.long).flatten().cpu()
    if k.numel() == 1:
        k = k.expand(batch)
    if k.numel() != batch:
        raise ValueError(f"need one noise level per image ({batch}), got {k.numel()}")
    if int(k.min()) < 0 or int(k.max()) > MAX_NOISE:
        raise ValueError(f"noise level must be between 0 and {MAX_NOISE}, got {k.tolist()}")
    table = torch.cat([torch.ones(1), alphas_cumprod.detach().float().cpu()])
    return table[k]


def remove_texture(x0p: torch.Tensor, mask: torch.Tensor, k: NoiseLevel, noise: torch.Tensor,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Eq. 5-6 in closed form, inside the RoI: x'_k = sqrt(abar_k) x'_0 + sqrt(1 - abar_k) eps."""
    a = alpha_bar_k(alphas_cumprod, k, x0p.shape[0]).to(x0p.device, x0p.dtype).view(-1, 1, 1, 1)
    noised = a.sqrt() * x0p + (1 - a).sqrt() * noise.to(x0p.device, x0p.dtype)
    m = mask.to(x0p.dtype)
    return m * noised + (1 - m) * x0p


def removal_image(x: torch.Tensor, mask: torch.Tensor, k: NoiseLevel, noise: torch.Tensor,
                  alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x'_k: colour removal (Eq. 4) then texture removal (Eq. 5-6), both inside the RoI."""
    return remove_texture(remove_colour(x, mask), mask, k, noise, alphas_cumprod)


def edge_tensor(image: Image.Image, low: int = 100, high: int = 200) -> torch.Tensor:
    """C(x0): the Canny edge map of a photo as a (1, 1, H, W) float tensor in {0, 1}."""
    edges = np.asarray(canny(image, int(low), int(high)).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(edges)[None, None]


def condition(x_k: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Eq. 7: R(x0) = [x'_k, C(x0)], a (B, 4, H, W) tensor."""
    edges = edges.to(x_k.device, x_k.dtype)
    if edges.shape[0] != x_k.shape[0]:
        edges = edges.expand(x_k.shape[0], -1, -1, -1)
    return torch.cat([x_k, edges], dim=1)


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """A float (H, W) numpy mask -> (1, 1, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
