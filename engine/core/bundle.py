"""A transformers model with its processor: what the captioner, CLIP and segmenter loaders return."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelBundle:
    """A loaded, frozen model and the processor that prepares its inputs."""

    model: Any
    processor: Any
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_bundle(model_cls, processor_cls, source: str, device, dtype, bundle_cls=ModelBundle):
    """`model_cls.from_pretrained(source)` + `processor_cls.from_pretrained(source)`, moved to
    device/dtype, in eval mode with gradients off. `source` is a hub id or a local folder."""
    model = model_cls.from_pretrained(source).to(device=torch.device(device), dtype=dtype).eval()
    model.requires_grad_(False)
    return bundle_cls(model=model, processor=processor_cls.from_pretrained(source), source=str(source))
