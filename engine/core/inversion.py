"""DDIM inversion: run the deterministic DDIM update backwards, x_{t} -> x_{t+1}, from a clean
latent to noise (Song et al., 2021; Mokady et al., 2023). An optional `regularize` callback may
change the predicted noise at each step (pix2pix-zero's regularised inversion, Sec. 3.1).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from engine.core.sampling import UNetCounter, alpha_bar, ddim_move, predict_noise, timesteps
from engine.types import StepCallback, StepInfo

NoiseRegularizer = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def ddim_invert(sd, scheduler, latents: torch.Tensor, cond: torch.Tensor, steps: int, counter: UNetCounter,
                until: Optional[int] = None, regularize: Optional[NoiseRegularizer] = None,
                on_step: Optional[StepCallback] = None, stage: str = "inversion",
                control=None) -> list[torch.Tensor]:
    """Invert `latents` with the conditional noise prediction (no CFG, as is standard).

    Returns the trajectory [x_0, x_{t_1}, ..., x_{t_n}] in increasing noise, where t_i are the
    sampling timesteps in ascending order; `until` stops after that many steps (SDEdit-style
    partial inversion). traj[k] pairs with the sampling timestep timesteps[-k] for k >= 1.
    """
    ts = timesteps(scheduler, steps, latents.device).flip(0)  # ascending: 1, 21, ..., 981
    n = len(ts) if until is None else int(until)
    traj = [latents]
    x = latents
    for i in range(n):
        t = ts[i]
        # eps is evaluated at the target timestep t on the latent one level below (the usual
        # first-order approximation, as in null-text inversion): x_t = DDIM(x_{t-1}, eps(x_{t-1}, t)).
        a_from = alpha_bar(scheduler, ts[i - 1]) if i > 0 else alpha_bar(scheduler, -1)
        eps = predict_noise(sd.unet, x, t, cond, counter, control=control)
        if regularize is not None:
            eps = regularize(eps, i)
        x = ddim_move(x, eps, a_from, alpha_bar(scheduler, t))
        traj.append(x)
        if on_step:
            on_step(StepInfo(stage, i + 1, n))
    return traj
