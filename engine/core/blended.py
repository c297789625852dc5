"""Masked SDEdit denoising, shared by SDEdit-with-mask and iEdit's inference (iEdit Eq. 13).

Start from x_t ~ q(x_t | x_0) at the first timestep, run DDIM with classifier-free guidance,
and after each step replace the latents outside the mask by the input's latents noised to the
next level (by the input's own latents after the last step, "blending at t = 0").
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from engine.core import sampling as S

LatentsHook = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def masked_sdedit(unet, scheduler, x0: torch.Tensor, noise: torch.Tensor, ts: torch.Tensor,
                  cond: torch.Tensor, uncond: Optional[torch.Tensor], cfg: float, counter: S.UNetCounter,
                  mask: Optional[torch.Tensor] = None, control: Optional[S.Control] = None,
                  on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
                  on_latents: Optional[LatentsHook] = None) -> torch.Tensor:
    """Denoise `noise.shape[0]` samples of x0 over the timesteps `ts` (see module docstring).

    x0: (1, 4, h, w) input latents; noise: (B, 4, h, w); mask: (1, 1, h, w) in [0, 1], 1 = edit.
    `on_latents(i, latents, background)` sees the latents after each step (tests use it);
    `on_step(i, n, latents)` reports progress with them (the live preview).
    """
    b = noise.shape[0]
    x0b = x0.expand(b, -1, -1, -1)
    x = S.add_noise(scheduler, x0b, noise, ts[0])
    for i, t in enumerate(ts):
        eps = S.predict_noise(unet, x, t, cond, counter, uncond=uncond, cfg=cfg, control=control)
        x = S.ddim_step(scheduler, eps, t, x)
        background = None
        if mask is not None:
            last = i == len(ts) - 1
            background = x0b if last else S.add_noise(scheduler, x0b, noise, S.previous_timestep(scheduler, t))
            x = S.blend(x, background, mask)
        if on_latents is not None:
            on_latents(i, x, background)
        if on_step is not None:
            on_step(i + 1, len(ts), x)
    return x
