"""ITO's inference-time optimisation of the latents (papers/ito.txt, Sec. 3.2, Eq. 3-6).

During the first t_u steps of DDIM decoding, before the UNet sees y_t, the latents are updated
with k steps (learning rate gamma) on

    (1 - lambda) * L_G(y_t, g_t) + lambda * L_REC(y_t, x_t, m)                          (Eq. 6)

    L_REC = || (1 - m) * (y_t - x_t) ||_2^2                                             (Eq. 4)
    L_G   = 1 - <y_t, g_t> / (||y_t|| ||g_t||)                                          (Eq. 5)

x_t: the photo's DDIM-inverted latents; g_t: the guidance image's; m: the binary edit mask
(1 = edit). Eq. 4 is printed as ||m * y_t - (1 - m) * x_t||^2, but the text says the loss acts
where the edit must NOT happen ("implicitly unconstrained flexibility in image regions that are
valid edit regions", and the DiffEdit blend it replaces keeps x where m = 0), so it is read as the
squared distance outside the edit mask (a sum over elements, Eq. 3's squared L2 norm).

How lambda stays a trade-off (Sec. 3.2 "adjusting lambda can allow the user to balance between
content preservation and edit instruction accuracy"; Fig. 5 shows a graded change from the
guidance image at lambda = 0 to DiffEdit-like preservation at 1). The paper optimises with Adam,
gamma = 0.1, k = 1 (Sec. 4). Adam divides each element's step by the root mean square of its own
gradient, so one Adam on the weighted sum of Eq. 6 throws lambda away: with k = 1 every element
moves by gamma * sign(gradient); inside the mask only L_G has a gradient and its weight (1 - lambda)
cancels; outside, ||grad L_REC|| is ~1e4 times ||grad L_G|| and wins the sign for any lambda > 0.
Measured on that code (issue 14; tiny models, 128 px, half mask): the edit moved 0.25 grey levels
from lambda 0.6 to 0.2 and 27.5 to lambda 1. Here each loss keeps its own Adam moments (same betas, eps, bias
correction; a fresh state per timestep, since y_t is a new variable at each step), which brings
both gradients to unit scale per element -- the two losses made comparable, as Eq. 6's weighted
sum presumes -- and lambda then weights the two normalised directions:

    y' = y - gamma * ((1 - lambda) * Adam_G(grad L_G) + lambda * Adam_REC(grad L_REC))

Inside the mask the step is gamma * (1 - lambda) towards g_t, outside it blends the pull to x_t
(weight lambda) with the pull to g_t (weight 1 - lambda): the distance of the edit from the photo
changes smoothly and monotonically with lambda (tests/test_ito_mechanisms.py::
test_lambda_is_a_graded_trade_off_across_its_range). At lambda = 1 this is exactly the paper's
Adam on Eq. 4 alone (the guidance pass), at lambda = 0 exactly Adam on Eq. 5 alone.
Measured (tiny models, 128 px, left-half mask, paper defaults: 25 steps, t_u 15, k 1, lr 0.1), mean
latent distance of y_0 from x_0 outside the mask / from the guidance latents g_0 inside, for lambda
0, 0.25, 0.5, 0.6, 0.75, 0.9, 1: 2.20 1.73 1.01 0.74 0.51 0.45 0.42 / 6.24 6.67 7.19 7.59 8.31 9.15 9.79
(the single Adam: 2.20 0.48 0.48 0.48 0.48 0.48 0.42 / 6.24 5.84 5.83 5.83 5.83 5.83 9.79).

Both losses involve only the latents: the gradient is d(loss)/d(y_t), never through the UNet.
The UNet runs under no_grad; no backward pass touches the model (unet_evals["backward"] = 0).
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


class AdamMoments:
    """Adam's per-element normalisation of one loss's gradients (Kingma & Ba, 2015, Algorithm 1):
    m_hat / (sqrt(v_hat) + eps), with the default betas (0.9, 0.999) and eps 1e-8 of torch.optim.Adam.
    An element with no gradient (inside the mask, for L_REC) gets no step."""

    def __init__(self, like: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return m_hat / (v_hat.sqrt() + self.eps)


def ito_update(y: torch.Tensor, x_t: torch.Tensor, g_t: Optional[torch.Tensor], keep: torch.Tensor,
               lam: float, k: int, lr: float) -> tuple[torch.Tensor, dict[str, float]]:
    """k steps of Eq. 6 on y_t, each loss's gradient normalised by its own Adam moments; returns the
    updated latents (detached) and the last losses.

        y' = y - gamma * ((1 - lambda) * A_G(grad L_G) + lambda * A_REC(grad L_REC))

    A_G and A_REC are Adam's moment normalisation (m_hat / (sqrt(v_hat) + eps)) of each loss's own
    gradient, so both directions have unit scale per element before lambda weights them (see the
    module docstring). lambda = 1 or no guidance latents: preservation only (the guidance pass, Fig. 1a).
    """
    use_g = g_t is not None and lam < 1.0
    use_rec = lam > 0.0
    x_t = x_t.detach().float()
    g_t = g_t.detach().float() if use_g else None
    keep = keep.detach().float()
    z = y.detach().float().clone()
    terms = []  # (name, weight, loss of y_t, Adam moments of that loss)
    if use_rec:
        terms.append(("preservation", lam, lambda v: preservation_loss(v, x_t, keep), AdamMoments(z)))
    if use_g:
        terms.append(("guidance", 1.0 - lam, lambda v: guidance_loss(v, g_t), AdamMoments(z)))
    losses: dict[str, torch.Tensor] = {}
    if not terms:
        return z.to(y.dtype), losses
    for _ in range(int(k)):
        step = torch.zeros_like(z)
        for name, weight, loss_fn, moments in terms:
            with torch.enable_grad():
                v = z.clone().requires_grad_(True)
                loss = loss_fn(v)
                (grad,) = torch.autograd.grad(loss, v)  # d loss / d y_t only: the graph holds latents, no model
            losses[name] = loss.detach()  # a 0-d tensor: read after the loop, not waited for here
            step = step + weight * moments.direction(grad)  # Eq. 6: (1 - lambda) L_G + lambda L_REC
        z = z - lr * step  # gamma = lr (Sec. 4, "Implementation")
    return z.to(y.dtype), losses


def ito_decode(unet, scheduler, start: torch.Tensor, ts: torch.Tensor, cond: torch.Tensor,
               uncond: Optional[torch.Tensor], cfg: float, control: Optional[Control], counter: UNetCounter,
               targets: Sequence[torch.Tensor], keep: torch.Tensor, lam: float, t_u: int, k: int, lr: float,
               guides: Optional[Sequence[torch.Tensor]] = None,
               on_step: Optional[Callable[[int, int, dict, torch.Tensor], None]] = None) -> torch.Tensor:
    """DDIM decoding from `start` at ts[0] with the ITO update before each of the first t_u steps.

    targets[i] / guides[i] are x_t / g_t at timestep ts[i]. Returns y_0.
    """
    y = start.float()
    n = len(ts)
    for i, t in enumerate(ts):
        losses: dict[str, torch.Tensor] = {}
        if i < t_u and k > 0:
            y, losses = ito_update(y, targets[i], guides[i] if guides is not None else None, keep, lam, k, lr)
        with torch.no_grad():
            eps = predict_noise(unet, y, t, cond, counter, uncond=uncond, cfg=cfg, control=control)
            y = ddim_step(scheduler, eps.float(), t, y)  # Eq. 1
        if on_step:
            on_step(i + 1, n, losses, y)
    return y
