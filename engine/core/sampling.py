"""Shared diffusion pieces: prompt and image encoding, noise prediction with classifier-free
guidance, the deterministic DDIM step, SDEdit noising and latent blending outside a mask.

Notation follows DDIM (Song et al., 2021): alpha_t is the scheduler's cumulative product
("alphas_cumprod"), x0_pred = (x_t - sqrt(1 - alpha_t) * eps) / sqrt(alpha_t).
"""
from __future__ import annotations

import threading
import weakref
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from engine.core.controlnet_features import condition_features, residuals, supports_features


@dataclass
class UNetCounter:
    """Counts UNet evaluations per run (one batched call = one evaluation)."""

    forward: int = 0
    backward: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}


@dataclass
class Control:
    """One or more ControlNets with their condition images (B=1 tensors in [0, 1]) and scales.

    Made per edit; it keeps each image's conditioning features E(c) once computed, so the steps of
    the edit share them (engine/core/controlnet_features.py)."""

    models: Sequence[torch.nn.Module]
    images: Sequence[torch.Tensor]
    scales: Sequence[float]
    _features: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def features(self, i: int, device, dtype) -> torch.Tensor:
        """E(c) of the i-th image for the i-th model, computed on first use (no gradient)."""
        key = (i, str(device), dtype)
        if key not in self._features:
            with torch.no_grad():
                self._features[key] = condition_features(self.models[i], self.images[i].to(device, dtype))
        return self._features[key]


# -- a model's dtype and device --------------------------------------------------------------
def param_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a model's first floating parameter. diffusers' `.dtype` and `.device` walk every
    submodule (looking for casting and offloading hooks, which the studio does not use): 1.9 ms per
    call on SD1.5's UNet, paid at every step when asked per step; this reads one parameter."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return getattr(module, "dtype", torch.float32)


def param_device(module: torch.nn.Module) -> Optional[torch.device]:
    """The device of a model's first parameter (see param_dtype); None for a model without any."""
    first = next(module.parameters(), None)
    return first.device if first is not None else getattr(module, "device", None)


# -- text and image encoding -------------------------------------------------------------
@torch.no_grad()
def encode_prompts(sd, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings of shape (len(prompts), 77, dim), padded to the model's length."""
    tokens = sd.tokenizer(list(prompts), padding="max_length", max_length=sd.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    return sd.text_encoder(tokens.input_ids.to(param_device(sd.unet)))[0]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) tensor in [-1, 1] -> list of PIL RGB images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


@torch.no_grad()
def encode_image(sd, image: Image.Image) -> torch.Tensor:
    """The VAE's latent (posterior mean, scaled) of an RGB image."""
    x = pil_to_tensor(image).to(param_device(sd.vae), param_dtype(sd.vae))
    return sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(sd, latents: torch.Tensor) -> list[Image.Image]:
    """The VAE decoder's images of `latents`. In fp16 the decoder can overflow (inf, then NaN after a
    norm) on latents far from the training range; only then is that decode redone in fp32, by an
    fp32 copy of the decoder made on first need (the cached model is never changed)."""
    z = latents / sd.vae.config.scaling_factor
    images = sd.vae.decode(z.to(param_dtype(sd.vae))).sample
    if images.dtype == torch.float16 and not torch.isfinite(images).all():  # one check per decode, not per step
        images = fp32_vae(sd.vae).decode(z.float()).sample
    return tensor_to_pil(images)


_FP32_VAES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FP32_LOCK = threading.Lock()


def fp32_vae(vae):
    """An fp32 copy of an fp16 VAE, made once per VAE and kept while the VAE lives."""
    with _FP32_LOCK:
        copy = _FP32_VAES.get(vae)
        if copy is None:
            copy = _FP32_VAES[vae] = deepcopy(vae).float().eval().requires_grad_(False)
        return copy


# -- noise prediction ---------------------------------------------------------------------
def predict_noise(unet, latents: torch.Tensor, t, cond: torch.Tensor, counter: UNetCounter,
                  uncond: Optional[torch.Tensor] = None, cfg: float = 1.0,
                  control: Optional[Control] = None) -> torch.Tensor:
    """eps_theta(x_t, t, c), with classifier-free guidance when `uncond` is given and cfg != 1:
    eps = eps_u + cfg * (eps_c - eps_u) (Ho & Salimans, 2022). The two halves run as one batch.

    `latents` may hold several samples (batch B); `cond`/`uncond` are (1 or B, 77, dim).
    """
    b = latents.shape[0]
    use_cfg = uncond is not None and cfg != 1.0
    cond = cond.expand(b, -1, -1) if cond.shape[0] == 1 else cond
    if use_cfg:
        uncond = uncond.expand(b, -1, -1) if uncond.shape[0] == 1 else uncond
        x_in = torch.cat([latents, latents])
        emb = torch.cat([uncond, cond])
    else:
        x_in, emb = latents, cond
    dtype = param_dtype(unet)  # not unet.dtype: that walks the whole UNet at every step
    x_in = x_in.to(dtype)
    emb = emb.to(dtype)
    kwargs = {}
    if control is not None:
        down, mid = None, None
        for i, (model, image, scale) in enumerate(zip(control.models, control.images, control.scales)):
            if supports_features(model):  # E(c) once per edit, not per step and sample
                d, m = residuals(model, x_in, t, emb, control.features(i, x_in.device, param_dtype(model)), scale)
            else:
                img = image.to(x_in.device, param_dtype(model)).expand(x_in.shape[0], -1, -1, -1)
                d, m = model(x_in, t, encoder_hidden_states=emb, controlnet_cond=img,
                             conditioning_scale=scale, return_dict=False)
            down = d if down is None else [a + b_ for a, b_ in zip(down, d)]
            mid = m if mid is None else mid + m
        kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    eps = unet(x_in, t, encoder_hidden_states=emb, **kwargs).sample
    counter.forward += 1
    if use_cfg:
        eps_u, eps_c = eps.chunk(2)
        eps = eps_u + cfg * (eps_c - eps_u)
    return eps.to(latents.dtype)


# -- DDIM -------------------------------------------------------------------------------------
def timesteps(scheduler, steps: int, device=None) -> torch.Tensor:
    """The descending DDIM timesteps for `steps` steps (SD1.5: offset 1, e.g. 981 ... 1 for 50)."""
    scheduler.set_timesteps(steps, device=device)
    return scheduler.timesteps


def _alpha_table(scheduler, device) -> torch.Tensor:
    """[final alpha, alpha_0, ..., alpha_{T-1}] on `device`, made once per scheduler and device."""
    tables = scheduler.__dict__.setdefault("_des_alpha_tables", {})
    key = str(device)
    if key not in tables:
        final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=scheduler.alphas_cumprod.dtype).reshape(1)
        tables[key] = torch.cat([final, scheduler.alphas_cumprod]).to(device)
    return tables[key]


def alpha_bar(scheduler, t) -> torch.Tensor:
    """alpha_t (cumulative); t < 0 means "before the first step" (the final alpha).

    A tensor t is looked up on its own device (no int(t): on a GPU that would make the host wait
    for the device at every step); a Python int as before."""
    if isinstance(t, torch.Tensor):
        return _alpha_table(scheduler, t.device)[(t.long() + 1).clamp_min(0)]
    t = int(t)
    if t < 0:
        return scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[t]


def previous_timestep(scheduler, t):
    """t - T / steps: the timestep one DDIM step later (a tensor stays a tensor, on its device)."""
    gap = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return t - gap if isinstance(t, torch.Tensor) else int(t) - gap


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDIM Eq. 12, first term)."""
    a_t = a_t.to(x_t.device, x_t.dtype)
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_move(x_t: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from noise level a_from to a_to, either direction:
    x_to = sqrt(a_to) x0 + sqrt(1 - a_to) eps (DDIM Eq. 12 with sigma = 0)."""
    a_to = a_to.to(x_t.device, x_t.dtype)
    return a_to.sqrt() * predict_x0(x_t, eps, a_from) + (1 - a_to).sqrt() * eps


def ddim_step(scheduler, eps: torch.Tensor, t, x_t: torch.Tensor) -> torch.Tensor:
    """One denoising step x_t -> x_{t-1}."""
    return ddim_move(x_t, eps, alpha_bar(scheduler, t), alpha_bar(scheduler, previous_timestep(scheduler, t)))


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) noise (DDPM Eq. 4)."""
    a_t = alpha_bar(scheduler, t).to(x0.device, x0.dtype)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def sdedit_timesteps(scheduler, steps: int, strength: float, device=None) -> torch.Tensor:
    """The last round(strength * steps) DDIM timesteps: SDEdit starts part-way (Meng et al., 2022)."""
    all_t = timesteps(scheduler, steps, device)
    n = max(1, min(steps, int(round(strength * steps))))
    return all_t[steps - n:]


def blend(latents: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep `latents` where mask = 1 and `background` where mask = 0 (mask broadcasts over channels)."""
    mask = mask.to(latents.device, latents.dtype)
    return mask * latents + (1 - mask) * background.to(latents.dtype)


def make_generator(seed: int, device) -> torch.Generator:
    """All randomness of a run comes from here; CPU generator so seeds agree across devices."""
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    return host_to_device(torch.randn(shape, generator=generator, dtype=torch.float32), device, dtype)


def host_to_device(x: torch.Tensor, device, dtype=None) -> torch.Tensor:
    """x (on the CPU) on `device` without making the host wait for the device's queued work: a copy
    from pageable memory to a GPU waits for the stream; from pinned memory with non_blocking it does
    not (torch's caching host allocator keeps the pinned buffer until the copy is done)."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, dtype, non_blocking=True)
    return x.to(device, dtype)
