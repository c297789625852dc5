"""A ControlNet step with its condition image's features computed once per edit.

diffusers' `ControlNetModel.forward` runs the conditioning embedding (a stack of convolutions on the
full-resolution condition image, Zhang et al. 2023, Sec. 3.2: "a tiny network E(.)") at every call,
for every sample of the batch. In an edit the condition image does not change between steps, and
under classifier-free guidance both halves of the batch carry the same image. So the studio runs
E(c) once per Control and image (at the image's own batch, 1 for most edits) and adds it to every
step's latents, broadcasting over the batch; the rest of the forward is the model's own, block by
block, the same order and arithmetic as diffusers' forward. On the tiny profile E(c) was half of the
ControlNet's time and a third of an IIR-Net step (bench.pipelines_vs_diffusers).

`supports_features(model)` says when this path applies: an SD1.5-style ControlNet (no class or
added embeddings, no global pooling) not compiled as a whole (the studio's --compile compiles its
blocks, which this path calls; a model compiled whole elsewhere keeps its own compiled forward).
Otherwise `predict_noise` calls the model as is.
tests/test_controlnet_features.py checks the residuals against the model's own forward.
"""
from __future__ import annotations

import torch


def supports_features(model) -> bool:
    config = model.config
    return (getattr(model, "class_embedding", None) is None and config.addition_embed_type is None
            and not config.global_pool_conditions and getattr(model, "_compiled_call_impl", None) is None
            and config.controlnet_conditioning_channel_order in ("rgb", "bgr"))


def condition_features(model, image: torch.Tensor) -> torch.Tensor:
    """E(c): the conditioning embedding of a condition image (B, C, H, W) on the model's device."""
    if model.config.controlnet_conditioning_channel_order == "bgr":
        image = torch.flip(image, dims=[1])
    return model.controlnet_cond_embedding(image)


def residuals(model, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
              features: torch.Tensor, scale: float) -> tuple[list, torch.Tensor]:
    """The ControlNet's (down residuals, mid residual) for latents `sample` at `timestep`, given E(c)
    (batch 1 or the latents' batch), each multiplied by `scale`: ControlNetModel.forward without E."""
    t = timestep
    if not torch.is_tensor(t):
        t = torch.tensor([t], dtype=torch.int64, device=sample.device)
    elif t.dim() == 0:
        t = t[None].to(sample.device)
    t = t.expand(sample.shape[0])
    emb = model.time_embedding(model.time_proj(t).to(dtype=sample.dtype), None)
    h = model.conv_in(sample) + features  # the control enters at the first block's input
    skips = (h,)
    for block in model.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    if model.mid_block is not None:
        if getattr(model.mid_block, "has_cross_attention", False):
            h = model.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h = model.mid_block(h, emb)
    down = [zero_conv(s) * scale for s, zero_conv in zip(skips, model.controlnet_down_blocks)]
    return down, model.controlnet_mid_block(h) * scale
