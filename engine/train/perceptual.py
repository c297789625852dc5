"""VGG16 features for iEdit's perceptual loss (Eq. 10; Johnson et al., 2016; Simonyan & Zisserman, 2015).

`load_vgg(source, device, dtype)` returns a frozen `VGGFeatures` module that maps images in
[-1, 1] to the activations after relu1_2, relu2_2 and relu3_3 (the layers before each of
the first three max-pools). Sources:
- a hub id (default `timm/vgg16.tv_in1k`, torchvision's ImageNet VGG16 in timm's format),
  loaded with `timm.create_model("hf-hub:<id>", pretrained=True)`;
- a local folder in timm's hub layout (config.json + model.safetensors), via "local-dir:";
- a folder written by `build_tiny_vgg` (config.json with "architecture": "tiny-vgg" and
  model.safetensors): a small random VGG-like net for the tiny profile and the tests.

`perceptual_loss(vgg, a, b)` is the mean over those layers of the mean squared feature
difference (the paper does not say which layers it uses; these are the usual ones).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_ARCHITECTURE = "tiny-vgg"
POOLS_KEPT = 3  # features up to relu3_3 (VGG16), i.e. before the third max-pool


class VGGFeatures(nn.Module):
    """The convolutional trunk of a VGG, cut before its POOLS_KEPT-th max-pool, with taps."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        layers, taps, pools = [], [], 0
        items = list(features)
        for i, layer in enumerate(items):
            if isinstance(layer, nn.MaxPool2d):
                pools += 1
                if pools == POOLS_KEPT:
                    break
            if isinstance(layer, nn.ReLU):
                layer = nn.ReLU(inplace=False)  # in-place ReLUs would overwrite tapped activations
                nxt = items[i + 1] if i + 1 < len(items) else None
                if nxt is None or isinstance(nxt, nn.MaxPool2d):
                    taps.append(len(layers))
            layers.append(layer)
        if not taps:
            raise ValueError("the VGG network has no ReLU layer before a max-pool to take features from")
        self.features = nn.Sequential(*layers[:taps[-1] + 1])
        self.taps = taps
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> activations at each tap."""
        p = next(self.parameters())
        x = ((x.to(p.dtype) + 1.0) / 2.0 - self.mean.to(p.dtype)) / self.std.to(p.dtype)
        return tapped_activations(self.features, self.taps, x)


def tapped_activations(features: nn.Sequential, taps, x: torch.Tensor) -> list[torch.Tensor]:
    """Run `features` on x and keep the outputs of the layers whose indices are in `taps`."""
    out = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out


def perceptual_loss(vgg: VGGFeatures, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||V(a) - V(b)||^2 (Eq. 10), averaged over elements and over the tapped layers."""
    fa, fb = vgg(a), vgg(b)
    return sum(F.mse_loss(x.float(), y.float()) for x, y in zip(fa, fb)) / len(fa)


# -- tiny stand-in -------------------------------------------------------------------------------
def tiny_trunk(channels: Sequence[int]) -> nn.Sequential:
    """conv-relu-conv-relu-pool per entry of `channels` (a VGG block with 2 convs)."""
    layers: list[nn.Module] = []
    c_in = 3
    for j, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        if j < len(channels) - 1:
            layers.append(nn.MaxPool2d(2, 2))
        c_in = c
    return nn.Sequential(*layers)


def build_tiny_vgg(out_dir: Path) -> None:
    """Write a small random VGG-like net (3 blocks of 8/16/16 channels) to `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = [8, 16, 16]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trunk = tiny_trunk(channels)
    save_file({f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()},
              str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({"architecture": TINY_ARCHITECTURE, "channels": channels}))


# -- loading ----------------------------------------------------------------------------------------
def _load_tiny(folder: Path) -> nn.Sequential:
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    trunk = tiny_trunk(config["channels"])
    state = {k.removeprefix("features."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    trunk.load_state_dict(state)
    return trunk


def load_vgg(source: str, device: torch.device, dtype: torch.dtype) -> VGGFeatures:
    """A frozen VGGFeatures from a tiny folder, a timm-layout folder or a hub id (see module doc)."""
    folder = Path(str(source))
    config = folder / "config.json"
    if folder.is_dir() and config.is_file() and \
            json.loads(config.read_text()).get("architecture") == TINY_ARCHITECTURE:
        trunk = _load_tiny(folder)
    else:
        import timm

        name = f"local-dir:{folder}" if folder.is_dir() else f"hf-hub:{source}"
        trunk = timm.create_model(name, pretrained=True).features
    model = VGGFeatures(trunk).to(device=torch.device(device), dtype=dtype).eval()
    model.requires_grad_(False)
    return model
