"""The two optimisations of LayerDiffusion (Li et al., 2023, Sec. 3.2.1-3.2.2).

Both use the masked diffusion loss: noise a latent to a random timestep t (DDPM Eq. 4), ask the
UNet for the noise and compare inside a mask, ||M * (eps - f_theta(x_t, t, e))||^2 (Eq. 2, 4, 5).
The loss is averaged over the mask's area (the paper writes the sum; the mean keeps the scale
independent of the subject's size and of the resolution, so one learning rate fits all).

Each step runs the photo and the reference as one batch of two: one UNet forward and one
backward per step.

fp16 models: the loss is multiplied by a constant before `backward` so small gradients do not
underflow in half precision. Adam's update m / sqrt(v) does not change when every gradient is
multiplied by the same constant, so no unscaling is needed; a step whose gradients overflow is
skipped.

Guarded through LayerDiffusion's `run` by tests/test_layer_diffusion_mechanisms.py: Eq. 1
(`noised_batch`) by test_eq1_training_inputs_are_the_noised_photo_and_reference; Eq. 2, 4, 5
(`masked_mse`, which embedding and mask meet which image) by
test_eq2_eq4_eq5_losses_are_masked_losses_of_the_right_image_text_and_region; Eq. 3 (`interpolate`)
by test_eq3_eq8_sampling_alternates_optimised_e_a_and_e_opt_linear_in_alpha; Eq. 6 by
test_eq6_loss_weights_choose_the_region_the_fine_tuning_fits.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch

from engine.core import sampling as S

FP16_LOSS_SCALE = 1024.0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """||M * (target - pred)||^2 / (|M| * C): the masked diffusion loss (Eq. 2, 4, 5), per element."""
    mask = mask.to(pred.device, torch.float32)
    err = (pred.float() - target.float()) ** 2 * mask
    area = mask.sum() * pred.shape[1]
    return err.sum() / area.clamp_min(1e-8)


def noised_batch(scheduler, x0: torch.Tensor, generator: torch.Generator):
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with t ~ U{0..T-1} per sample (DDPM Eq. 4, Eq. 1)."""
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = S.randn(tuple(x0.shape), generator, x0.device, torch.float32)
    a = S.host_to_device(scheduler.alphas_cumprod[t], x0.device, torch.float32).view(b, 1, 1, 1)
    x_t = a.sqrt() * x0.float() + (1 - a).sqrt() * noise
    return x_t, S.host_to_device(t, x0.device), noise


def loss_scale(dtype: torch.dtype) -> float:
    return FP16_LOSS_SCALE if dtype == torch.float16 else 1.0


def _adam_step(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor], scale: float) -> bool:
    """opt.step() unless a gradient overflowed (fp16); True when the step was taken."""
    if scale != 1.0:
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            return False
    opt.step()
    opt.zero_grad(set_to_none=True)
    return True


def optimize_embeddings(unet, scheduler, x_photo: torch.Tensor, x_ref: torch.Tensor, m_subject: torch.Tensor,
                        m_background: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor, steps: int, lr: float,
                        generator: torch.Generator, counter, report: Callable[[int, float, float], None]):
    """Layered controlled optimisation (Eq. 2): e_a on the subject region of the noised photo and
    e_b on the background region of the noised reference, together with one Adam, UNet frozen.

    Returns the optimised (e_a, e_b) as float32 tensors without gradients.
    """
    e_a = e_a.detach().float().clone().requires_grad_(True)
    e_b = e_b.detach().float().clone().requires_grad_(True)
    x0 = torch.cat([x_photo, x_ref]).float()
    dtype = S.param_dtype(unet)  # once: unet.dtype walks the whole UNet
    scale = loss_scale(dtype)
    opt = torch.optim.Adam([e_a, e_b], lr=lr)
    try:
        for i in range(steps):
            x_t, t, noise = noised_batch(scheduler, x0, generator)
            with torch.enable_grad():
                emb = torch.cat([e_a, e_b]).to(dtype)
                eps = unet(x_t.to(dtype), t, encoder_hidden_states=emb).sample
                counter.forward += 1
                loss_a = masked_mse(eps[:1], noise[:1], m_subject)  # Eq. 2 with M = subject mask of the photo
                loss_b = masked_mse(eps[1:], noise[1:], m_background)  # Eq. 2 with M = background of the reference
                ((loss_a + loss_b) * scale).backward()
            counter.backward += 1
            _adam_step(opt, [e_a, e_b], scale)
            report(i, loss_a.detach(), loss_b.detach())  # 0-d tensors: no wait for the device per step
    finally:
        opt.zero_grad(set_to_none=True)
        opt.state.clear()
        del opt
    return e_a.detach(), e_b.detach()


def interpolate(e_a: torch.Tensor, e_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """e_opt = alpha * e_a + (1 - alpha) * e_b (Eq. 3); alpha = 1 returns e_a exactly."""
    if alpha == 1.0:
        return e_a.clone()
    if alpha == 0.0:
        return e_b.clone()
    return alpha * e_a + (1.0 - alpha) * e_b


def fine_tune(unet, params: Sequence[torch.nn.Parameter], scheduler, x_photo: torch.Tensor, x_ref: torch.Tensor,
              m_subject: torch.Tensor, m_background: torch.Tensor, e_opt: torch.Tensor, lambda1: float,
              lambda2: float, steps: int, lr: float, generator: torch.Generator, counter,
              report: Callable[[int, float, float], None], autocast: Optional[torch.dtype] = None) -> int:
    """Layered diffusion fine-tuning (Eq. 4-6) of `params` at the fixed e_opt.

    L_obj on the subject region of the photo (Eq. 4), L_bg on the background region of the
    reference (Eq. 5), L = lambda1 L_obj + lambda2 L_bg (Eq. 6). Returns the number of skipped
    (overflowed) steps. The optimiser is freed before returning, also on an exception.
    """
    params = list(params)
    x0 = torch.cat([x_photo, x_ref]).float()
    emb = e_opt.detach().expand(2, -1, -1)
    dtype = S.param_dtype(unet)  # once: unet.dtype walks the whole UNet
    run_dtype = autocast or dtype
    scale = loss_scale(run_dtype)
    amp = torch.autocast(x0.device.type, dtype=autocast) if autocast is not None else nullcontext()
    opt = torch.optim.Adam(params, lr=lr)
    skipped = 0
    try:
        for i in range(steps):
            x_t, t, noise = noised_batch(scheduler, x0, generator)
            with torch.enable_grad(), amp:
                eps = unet(x_t.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample
                counter.forward += 1
                l_obj = masked_mse(eps[:1], noise[:1], m_subject)  # Eq. 4: M_t * (eps - f)
                l_bg = masked_mse(eps[1:], noise[1:], m_background)  # Eq. 5: (1 - M_r) * (eps - f)
                total = lambda1 * l_obj + lambda2 * l_bg  # Eq. 6
                (total * scale).backward()
            counter.backward += 1
            skipped += 0 if _adam_step(opt, params, scale) else 1
            report(i, l_obj.detach(), l_bg.detach())
    finally:
        opt.zero_grad(set_to_none=True)
        opt.state.clear()
        del opt
        for p in params:
            p.grad = None
    return skipped


def private_copy(unet, device: torch.device) -> torch.nn.Module:
    """A trainable float32 deep copy of the UNet for the full fine-tune (the cached one is never
    touched). A half-precision model's copy runs under autocast (see `fine_tune`): lr 2e-6
    updates would round away in fp16 weights, and Adam's state would overflow.
    """
    tuned = copy.deepcopy(unet)
    # Hooks (model CPU offload) belong to the cached model; the copy lives on the device.
    for hooks in ("_forward_pre_hooks", "_forward_hooks"):
        getattr(tuned, hooks, {}).clear()
    torch.nn.Module.to(tuned, device=device, dtype=torch.float32)  # plain cast: no fp32-module rules apply
    tuned.requires_grad_(True)
    return tuned
