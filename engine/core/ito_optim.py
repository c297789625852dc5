"""ITO's inference-time optimisation of the latents (papers/ito.txt, Sec. 3.2, Eq. 3-6).

During the first t_u steps of DDIM decoding, before the UNet sees y_t, the latents are updated
with k Adam steps (learning rate gamma) on

    (1 - lambda) * L_G(y_t, g_t) + lambda * L_REC(y_t, x_t, m)                          (Eq. 6)

    L_REC = || (1 - m) * (y_t - x_t) ||_2^2                                             (Eq. 4)
    L_G   = 1 - <y_t, g_t> / (||y_t|| ||g_t||)                                          (Eq. 5)

x_t: the photo's DDIM-inverted latents; g_t: the guidance image's; m: the binary edit mask
(1 = edit). Eq. 4 is printed as ||m * y_t - (1 - m) * x_t||^2, but the text says the loss acts
where the edit must NOT happen ("implicitly unconstrained flexibility in image regions that are
valid edit regions", and the DiffEdit blend it replaces keeps x where m = 0), so it is read as the
squared distance outside the edit mask. It is the squared L2 norm of Eq. 3 (a sum, not a mean):
with a mean over the 4*h*w elements the preservation gradient would be ~1e4 times smaller than
the cosine loss's and lambda would lose its meaning.

Both losses involve only the latents: the gradient is d(loss)/d(y_t), never through the UNet.
The UNet runs under no_grad; no backward pass touches the model (unet_evals["backward"] = 0).
A fresh Adam state per timestep (y_t is a new variable at each step).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from engine.core.sampling import Control, UNetCounter, ddim_step, predict_noise


def preservation_loss(y: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Eq. 4: || keep * (y - x) ||^2 with keep = 1 - m (the region to preserve)."""
    return ((keep * (y - x)) ** 2).sum()


def guidance_loss(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 5: 1 - cosine similarity of the flattened latents (summed over the batch)."""
    return (1.0 - F.cosine_similarity(y.flatten(1), g.flatten(1), dim=1, eps=1e-8)).sum()


def ito_update(y: torch.Tensor, x_t: torch.Tensor, g_t: Optional[torch.Tensor], keep: torch.Tensor,
               lam: float, k: int, lr: float) -> tuple[torch.Tensor, dict[str, float]]:
    """k Adam steps on y_t for Eq. 6; returns the updated latents (detached) and the last losses.

    lambda = 1 or no guidance latents: preservation only (the guidance image pass, Fig. 1a).
    """
    use_g = g_t is not None and lam < 1.0
    use_rec = lam > 0.0
    x_t = x_t.detach().float()
    g_t = g_t.detach().float() if use_g else None
    keep = keep.detach().float()
    z = y.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    losses: dict[str, float] = {}
    with torch.enable_grad():
        for _ in range(int(k)):
            opt.zero_grad(set_to_none=True)
            total = z.new_zeros(())
            if use_rec:
                rec = preservation_loss(z, x_t, keep)
                total = total + lam * rec
                losses["preservation"] = float(rec.detach())
            if use_g:
                gl = guidance_loss(z, g_t)
                total = total + (1.0 - lam) * gl
                losses["guidance"] = float(gl.detach())
            if not total.requires_grad:
                break
            total.backward()  # d total / d z only: the graph holds latents, no model
            opt.step()        # Eq. 6 with Adam as the optimiser (Sec. 4, "Implementation")
    return z.detach().to(y.dtype), losses


def ito_decode(unet, scheduler, start: torch.Tensor, ts: torch.Tensor, cond: torch.Tensor,
               uncond: Optional[torch.Tensor], cfg: float, control: Optional[Control], counter: UNetCounter,
               targets: Sequence[torch.Tensor], keep: torch.Tensor, lam: float, t_u: int, k: int, lr: float,
               guides: Optional[Sequence[torch.Tensor]] = None,
               on_step: Optional[Callable[[int, int, dict], None]] = None) -> torch.Tensor:
    """DDIM decoding from `start` at ts[0] with the ITO update before each of the first t_u steps.

    targets[i] / guides[i] are x_t / g_t at timestep ts[i]. Returns y_0.
    """
    y = start.float()
    n = len(ts)
    for i, t in enumerate(ts):
        losses: dict[str, float] = {}
        if i < t_u and k > 0:
            y, losses = ito_update(y, targets[i], guides[i] if guides is not None else None, keep, lam, k, lr)
        with torch.no_grad():
            eps = predict_noise(unet, y, t, cond, counter, uncond=uncond, cfg=cfg, control=control)
            y = ddim_step(scheduler, eps.float(), t, y)  # Eq. 1
        if on_step:
            on_step(i + 1, n, losses)
    return y
