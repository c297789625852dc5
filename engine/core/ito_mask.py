"""ITO's edit mask (papers/ito.txt, Sec. 3.2 "Edit Mask Generation", Eq. 7).

For n seeds s_i the photo's latent x_0 is noised with random noise to an encoding level
(`ts[0]`; the method uses DiffEdit's 0.5 of the schedule, Sec. 4), x_E(s_i), and denoised with DDIM down to the last step twice: under the original condition C_0
and under the edit condition C_EDIT. The noise estimates of the last step are compared,

    m = 1/n sum_i | eps(x_1, 1, C_EDIT, s_i) - eps(x_1, 1, C_0, s_i) |          (Eq. 7)

averaged over the latent channels, smoothed with a Gaussian, normalised by its maximum and
thresholded at tau into a binary mask on the latent grid (1 = edit here).

All n seeds under both conditions run as ONE batch of 2n latents (4n with classifier-free
guidance), so each denoising step is one UNet (+ ControlNet) evaluation.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from engine.core.sampling import Control, UNetCounter, add_noise, ddim_step, predict_noise

# Below this fraction of the typical |eps|, a difference is numerical noise: the mask is empty.
EMPTY_RELATIVE = 1e-6


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of a (B, 1, H, W) map (replicate padding)."""
    if sigma <= 0:
        return m
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, device=m.device, dtype=m.dtype)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def batched_control(c0: Optional[Control], ce: Optional[Control], n: int, cfg_on: bool) -> Optional[Control]:
    """One Control for a batch [n x C_0, n x C_EDIT]: per-sample condition images.

    With CFG, `predict_noise` runs [uncond half; cond half] of the same 2n latents, so the
    images are repeated once more in that order.
    """
    if c0 is None:
        return None
    images = []
    for a, b in zip(c0.images, ce.images):
        half = torch.cat([a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)])
        images.append(torch.cat([half, half]) if cfg_on else half)
    return Control(models=list(c0.models), images=images, scales=list(c0.scales))


@torch.no_grad()
def noise_difference(unet, scheduler, x0: torch.Tensor, noises: torch.Tensor, ts: torch.Tensor,
                     cond0: torch.Tensor, cond_edit: torch.Tensor, uncond: Optional[torch.Tensor], cfg: float,
                     control0: Optional[Control], control_edit: Optional[Control], counter: UNetCounter,
                     on_step: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, float]:
    """The raw Eq. 7 map (1, 1, h, w), averaged over seeds and channels, and mean |eps_0|.

    `noises` (n, 4, h, w) are the seeds' noises; `ts` the descending DDIM timesteps from t_E
    down to the last step. One `predict_noise` call per step for all 2n trajectories.
    """
    n = noises.shape[0]
    x_e = add_noise(scheduler, x0.expand(n, -1, -1, -1), noises, ts[0])  # x_E(s_i): SDEdit encoding
    x = torch.cat([x_e, x_e])                                             # [C_0 x n, C_EDIT x n]
    cond = torch.cat([cond0.expand(n, -1, -1), cond_edit.expand(n, -1, -1)])
    cfg_on = uncond is not None and cfg != 1.0
    control = batched_control(control0, control_edit, n, cfg_on)
    eps = None
    for i, t in enumerate(ts):
        eps = predict_noise(unet, x, t, cond, counter, uncond=uncond, cfg=cfg, control=control)
        if i < len(ts) - 1:  # the last step's estimate is the one Eq. 7 compares
            x = ddim_step(scheduler, eps, t, x)
        if on_step:
            on_step(i + 1, len(ts))
    eps0, eps_edit = eps.float().chunk(2)
    diff = (eps_edit - eps0).abs().mean(dim=(0, 1), keepdim=True)        # Eq. 7: mean over seeds, channels
    return diff, float(eps0.abs().mean())


def binarize_difference(diff: torch.Tensor, tau: float, sigma: float = 1.0,
                        eps_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-smooth, normalise to [0, 1] and threshold at tau: (binary mask, soft map).

    A difference that is numerical noise (max below EMPTY_RELATIVE * eps_scale) gives an
    empty mask instead of normalising noise up to 1.
    """
    soft = gaussian_blur(diff.float(), sigma)
    peak = float(soft.max())
    if peak <= EMPTY_RELATIVE * max(eps_scale, 1e-8):
        zero = torch.zeros_like(soft)
        return zero, zero
    soft = soft / peak
    return (soft > tau).to(soft.dtype), soft


def estimate_edit_mask(unet, scheduler, x0, noises, ts, cond0, cond_edit, uncond, cfg, control0, control_edit,
                       counter, tau: float = 0.1, sigma: float = 1.0,
                       on_step=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 end to end: (binary mask (1, 1, h, w) on the latent grid, normalised soft map)."""
    diff, scale = noise_difference(unet, scheduler, x0, noises, ts, cond0, cond_edit, uncond, cfg,
                                   control0, control_edit, counter, on_step)
    return binarize_difference(diff, tau, sigma, scale)
