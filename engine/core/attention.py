"""Cross-attention capture through attention processors.

`capture_cross_attention(unet, sink)` swaps the processor of every cross-attention layer
(names ending in "attn2.processor") for one that computes the attention probabilities
explicitly, softmax(Q K^T / sqrt(d)), hands them to `sink(layer_name, probs)` and finishes the
layer as usual. Self-attention keeps its processor (SDPA). The original processors come back
when the block exits, also when it raises. No state is stored on the model's layers.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# sink(layer_name, probs) with probs of shape (batch, heads, query_pixels, text_tokens)
AttentionSink = Callable[[str, torch.Tensor], None]


def is_cross_attention(name: str) -> bool:
    return name.endswith("attn2.processor")


class CrossAttentionProbe:
    """Attention processor for a cross-attention layer that exposes its probabilities."""

    def __init__(self, name: str, sink: AttentionSink):
        self.name = name
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        batch = hidden_states.shape[0]
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = query.shape[-1] // heads
        # (B, N, H*d) -> (B, H, N, d)
        query, key, value = (x.view(batch, -1, heads, head_dim).transpose(1, 2) for x in (query, key, value))
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask.view(batch, heads, -1, scores.shape[-1])
        probs = scores.softmax(dim=-1)  # (B, H, pixels, tokens)
        self.sink(self.name, probs)
        out = torch.matmul(probs.to(value.dtype), value)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def capture_cross_attention(unet, sink: AttentionSink) -> Iterator[None]:
    """Route every cross-attention layer's probabilities to `sink` inside the block."""
    original = dict(unet.attn_processors)
    patched = {name: (CrossAttentionProbe(name, sink) if is_cross_attention(name) else proc)
               for name, proc in original.items()}
    unet.set_attn_processor(patched)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
