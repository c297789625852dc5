"""Temporary LoRA adapters on a shared model: added for one request, removed without a trace.

`temporary_lora(unet, rank)` injects peft LoRA layers (Hu et al., 2021: W + B A, B = 0 at the
start, so the model is unchanged until training) into the attention and feed-forward layers
and yields the trainable parameters. On exit, also after an exception or a cancellation, each
LoRA wrapper is replaced by the layer it wrapped, the peft config and diffusers' flag are
restored, and `requires_grad` comes back as it was: the module tree, the state dict and the
attention processors are exactly what they were before.

Adapter weights stay in float32 even on an fp16 model: lr 1e-4 steps on fp16 weights would
round away.

Guarded by tests/test_layer_diffusion.py: test_run_contract_and_determinism and
test_failed_or_cancelled_run_leaves_the_unet_untouched (the UNet's weights, modules, processors,
flags and requires_grad are identical after a run, a failed run and a cancelled one),
test_overlapping_adapters_are_both_removed; that the adapter takes part in sampling while it
lives: test_the_fine_tuned_unet_samples_and_an_untrained_one_changes_nothing.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

# Linear layers of every transformer block in SD1.5's UNet: self- and cross-attention
# projections and the feed-forward network.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


def _tuner_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def remove_adapter(model: torch.nn.Module, adapter_name: str) -> None:
    """Take `adapter_name` out of `model`: wrappers that hold only it go back to their base layer."""
    for name, layer in _tuner_layers(model):
        names = set()
        for attr in getattr(layer, "adapter_layer_names", ()):
            names |= set(getattr(layer, attr, {}).keys())
        if names - {adapter_name}:
            layer.delete_adapter(adapter_name)  # another adapter lives here: keep the wrapper
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter_name, None)


@contextmanager
def temporary_lora(model: torch.nn.Module, rank: int, generator: torch.Generator,
                   targets: Sequence[str] = DEFAULT_TARGETS,
                   alpha: float | None = None) -> Iterator[list[torch.nn.Parameter]]:
    """Add a fresh LoRA adapter of `rank` to a diffusers model for the duration of the block.

    Yields the adapter's parameters (float32, requires_grad=True). A ~ N(0, 1/rank^2) is drawn
    from `generator` (peft's "gaussian" init, made reproducible), B = 0; peft's own draws from
    the global RNG are undone. Everything is undone in a `finally`, whatever happens inside.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import cast_adapter_dtype

    name = f"tmp_lora_{uuid.uuid4().hex[:12]}"
    state = model.__dict__
    saved_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        init_lora_weights="gaussian", target_modules=list(targets))
    try:
        with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
            model.add_adapter(config, adapter_name=name)
        cast_adapter_dtype(model, adapter_name=name, autocast_adapter_dtype=True)
        params = []
        with torch.no_grad():
            for n, p in model.named_parameters():
                if f".{name}." not in n:
                    continue
                if ".lora_A." in n:
                    p.copy_(torch.randn(tuple(p.shape), generator=generator) / rank)
                else:
                    p.zero_()
                p.requires_grad_(True)
                params.append(p)
        yield params
    finally:
        remove_adapter(model, name)
        if not _tuner_layers(model) and not state.get("peft_config"):
            # No adapter left at all (ours was the only one, or an overlapping request's went
            # first): back to a model that never saw peft.
            state.pop("peft_config", None)
            state.pop("_hf_peft_config_loaded", None)
        for n, p in model.named_parameters():
            if n in saved_grad:
                p.requires_grad_(saved_grad[n])
