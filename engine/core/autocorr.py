"""pix2pix-zero's noise regularisation (Parmar et al., 2023, Sec. 3.1): keep the noise predicted
during DDIM inversion close to white Gaussian noise with L_auto = L_pair + lambda * L_KL.

- Pyramid: eta^0 is the predicted noise; each next level is 2x2 average pooled and multiplied by 2
  (to keep unit variance), down to 8x8 for SD-sized latents (64 -> 32 -> 16 -> 8: four levels). Tiny
  latents (smaller side under 16) continue down to a side of 2 instead.
- L_pair (Eq. 3): per level p and channel c, the squared autocorrelation coefficient
  rho = 1/S_p^2 sum_{x,y} eta_{x,y,c} eta_{x-delta,y,c} (circular), along both axes, with a random
  offset delta in [1, S_p - 1] drawn per level, axis and iteration from the run's generator.
  Eq. 3 assumes unit variance; we divide by the level's second moment 1/S_p^2 sum eta^2 so rho is a
  true coefficient (rho(0) = 1). That makes L_pair scale-invariant: it only decorrelates, and the
  variance is left to L_KL (without it, L_pair also shrinks the noise, fights L_KL and diverges on
  strongly correlated predictions).
- L_KL: per channel, KL(N(mu_c, sigma_c^2) || N(0, 1)) = 1/2 (sigma^2 + mu^2 - 1 - log sigma^2), the
  soft zero-mean unit-variance criterion.
Everything is vectorised over batch and channels; the only Python loops run over pyramid levels
and gradient iterations.

Step size: the paper gives lambda = 20 and 5 gradient iterations per inversion step but no step
size. We take eta <- eta - STEP * S_0^2 * grad L_auto: both losses are means over S_0^2 pixels, so
the factor S_0^2 makes the change of each element independent of the resolution (64x64 on SD,
16x11 on the tiny model). With STEP = 0.005 and lambda = 20 the KL term removes about 40 % of a
channel's standard-deviation error per iteration (a tenth survives the 5 iterations): soft, where
the paper warns that strict normalisation diverges. L_pair's share is small, as lambda = 20 says.

Against the official code (measured; test_regulariser_against_the_official_numerics in
tests/test_pix2pix_zero.py runs diffusers' deprecated auto_corr_loss / kl_divergence and its loop:
per iteration 5 rolls of step 20/5 on the raw-product loss, then a step of 20 on the KL). The official
code departs from the paper's text in ways we do not follow: its offsets are drawn from [0, S/2), so
delta = 0 occurs and adds (mean eta^2)^2, a pull towards zero variance; its pyramid pools without the
x2, so level p's products are 4^-p smaller and the coarse levels barely count; its KL is one term
over all channels without the 1/2; its steps are absolute, so its strength depends on the latent size.
One inversion step's 5 iterations on a fixed correlated noise (3x3 circular box blur, std 1.3, mean
0.1, seed 0), L_pair over all offsets / L_KL / relative change of the noise:
  64x64 (SD):  input 14.81 / 0.350;  ours 13.75 / 0.052 / 0.152;  official 14.26 / 0.250 / 0.042
  12x8:        input 14.97 / 0.336;  ours 11.95 / 0.056 / 0.166;  official  4.50 / 0.472 / 0.634
  8x5:         ours 9.19 / 0.049 / 0.150;  official overshoots (change 1.58, KL 1.47; NaN on white noise)
(With a 5x5 blur at 64x64 the official lowers L_pair slightly more: 31.20 vs 31.88 from 33.33.)
So at SD size both decorrelate about as much; ours pulls the per-channel variance to 1 harder (the
KL pull ~41 times the official's at 64x64, a choice lambda can turn down) and behaves the same at every
latent size, which the tiny-model tests need; the official numerics diverge on small latents.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

STEP = 0.005


def pyramid_floor(h: int, w: int) -> int:
    """The smallest side a pyramid level may have: 8 (the paper's 8x8) unless the latent is tiny."""
    return 8 if min(h, w) >= 16 else 2


def pyramid(eta: torch.Tensor) -> list[torch.Tensor]:
    """[eta^0, eta^1, ...]: 2x2 average pooling times 2 per level, while both sides stay >= the floor."""
    levels = [eta]
    floor = pyramid_floor(*eta.shape[-2:])
    while min(levels[-1].shape[-2] // 2, levels[-1].shape[-1] // 2) >= floor:
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2) * 2)
    return levels


def level_shapes(h: int, w: int) -> list[tuple[int, int]]:
    return [tuple(l.shape[-2:]) for l in pyramid(torch.zeros(1, 1, h, w))]


def draw_offsets(shapes: list[tuple[int, int]], generator: torch.Generator) -> list[tuple[int, int]]:
    """Random (delta_y, delta_x) per level, each in [1, side - 1], from the run's generator."""
    draws = torch.rand(len(shapes), 2, generator=generator)
    out = []
    for (h, w), (ry, rx) in zip(shapes, draws.tolist()):
        out.append((1 + int(ry * max(h - 1, 1)) if h > 1 else 0, 1 + int(rx * max(w - 1, 1)) if w > 1 else 0))
    return out


def pair_loss(eta: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """L_pair (Eq. 3) at the given offsets per level: sum_p sum_c (rho_y^2 + rho_x^2), per sample."""
    loss = eta.new_zeros(eta.shape[0])
    for level, (dy, dx) in zip(pyramid(eta), offsets):
        power = level.pow(2).mean(dim=(-2, -1)).clamp_min(1e-12)  # (B, C): 1/S^2 sum eta^2
        if dy:
            rho_y = (level * torch.roll(level, shifts=dy, dims=-2)).mean(dim=(-2, -1)) / power
            loss = loss + rho_y.pow(2).sum(-1)
        if dx:
            rho_x = (level * torch.roll(level, shifts=dx, dims=-1)).mean(dim=(-2, -1)) / power
            loss = loss + rho_x.pow(2).sum(-1)
    return loss


def kl_loss(eta: torch.Tensor) -> torch.Tensor:
    """L_KL: sum over channels of KL(N(mu_c, var_c) || N(0, 1)), per sample."""
    mu = eta.mean(dim=(-2, -1))
    var = eta.var(dim=(-2, -1), unbiased=False).clamp_min(1e-7)
    return (0.5 * (var + mu.pow(2) - 1 - var.log())).sum(-1)


def full_pair_loss(eta: torch.Tensor) -> torch.Tensor:
    """L_pair summed over every offset delta in [1, S_p - 1] on both axes (Eq. 3's full sum), per sample.

    The deterministic measure used for reports and tests; circular autocorrelation through the FFT.
    """
    loss = eta.new_zeros(eta.shape[0])
    for level in pyramid(eta.float()):
        h, w = level.shape[-2:]
        for dim, n in ((-2, h), (-1, w)):
            if n < 2:
                continue
            spec = torch.fft.rfft(level, dim=dim)
            acf = torch.fft.irfft(spec * spec.conj(), n=n, dim=dim) / n  # (B, C, H, W): lag along `dim`
            rho = acf.mean(dim=-1 if dim == -2 else -2)                   # mean over the other axis
            rho = rho / rho[..., :1].clamp_min(1e-12)                     # lag 0 = second moment
            loss = loss + rho[..., 1:].pow(2).sum(dim=(-2, -1))
    return loss


def make_regularizer(reg_lambda: float, iters: int, generator: torch.Generator,
                     record: Optional[Callable[[int, float, float], None]] = None):
    """The `regularize(eps, i)` hook for engine.core.inversion.ddim_invert.

    Each call takes `iters` gradient steps on the predicted noise with L_auto = L_pair + lambda L_KL
    (fresh random offsets every iteration) and returns the regularised noise in its own dtype.
    `record(i, l_pair, l_kl)` receives the losses after the last iteration (for curves; L_pair summed
    over all offsets).
    """

    def regularize(eps: torch.Tensor, i: int) -> torch.Tensor:
        if iters <= 0:
            return eps
        eta = eps.detach().float()
        shapes = level_shapes(*eta.shape[-2:])
        scale = STEP * eta.shape[-2] * eta.shape[-1]
        with torch.enable_grad():
            for _ in range(iters):
                offsets = draw_offsets(shapes, generator)
                var = eta.detach().requires_grad_(True)
                l_pair = pair_loss(var, offsets).sum()
                l_kl = kl_loss(var).sum()
                grad, = torch.autograd.grad(l_pair + reg_lambda * l_kl, var)  # L_auto = L_pair + lambda L_KL
                eta = (var - scale * grad).detach()
        if record is not None:  # the deterministic all-offsets L_pair, so the curve draws no random numbers
            with torch.no_grad():
                record(i, full_pair_loss(eta).sum(), kl_loss(eta).sum())  # 0-d tensors, read after the loop
        return eta.to(eps.dtype)

    return regularize


@torch.no_grad()
def noise_stats(noise: torch.Tensor) -> dict[str, float]:
    """Mean, std, lag-1 autocorrelation (mean over channels and both axes), full L_pair and L_KL."""
    x = noise.float()
    power = x.pow(2).mean(dim=(-2, -1)).clamp_min(1e-12)
    lag1 = torch.stack([(x * torch.roll(x, 1, dims=d)).mean(dim=(-2, -1)) / power for d in (-2, -1)])
    return {"mean": round(float(x.mean()), 5), "std": round(float(x.std()), 5),
            "autocorr_lag1": round(float(lag1.mean()), 5),
            "l_pair_all_offsets": round(float(full_pair_loss(x).mean()), 6),
            "l_kl": round(float(kl_loss(x).mean()), 6)}


def noise_image(noise: torch.Tensor, min_side: int = 256) -> Image.Image:
    """The channels of noise[0] tiled side by side (2x2 for 4), each standardised, [-3, 3] -> black..white."""
    x = noise[0].detach().float().cpu()
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    x = ((x.clamp(-3, 3) + 3) / 6 * 255).round().byte().numpy()
    c, h, w = x.shape
    cols = 2 if c == 4 else c
    rows = (c + cols - 1) // cols
    pad = 1
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), 128, np.uint8)
    for k in range(c):
        r, q = divmod(k, cols)
        canvas[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = x[k]
    img = Image.fromarray(canvas, "L")
    factor = max(1, -(-min_side // min(img.size)))
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST).convert("RGB")
