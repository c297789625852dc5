"""The networks behind the evaluation metrics, loaded through the model cache like every other model.

Components (see COMPONENTS in engine/models.py):

- `lpips` (LPIPS, Zhang et al., CVPR 2018): a VGG16 or AlexNet trunk tapped after the ReLU that
  closes each stage, channel-normalised activations, squared differences weighted per channel by
  the paper's learned linear layers, averaged over space and summed over layers (Eq. 1).
  Sources:
  * a hub id or a timm-layout folder (default `timm/vgg16.tv_in1k`: torchvision's ImageNet VGG16,
    the trunk of LPIPS-vgg), loaded with timm;
  * a torchvision state-dict file (`.pth`) of AlexNet or VGG16, e.g. torchvision's
    `alexnet-owt-7be5be79.pth`, the trunk of LPIPS-alex (the `lpips` package's default);
  * a folder written by `build_tiny_lpips`: a small random VGG-like trunk for the tests.
  The linear weights (the "v0.1" calibration) are not on the hub: they ship inside the `lpips`
  pip package (`lpips/weights/v0.1/{vgg,alex}.pth`). They are read from `DES_LPIPS_LINEAR` (a file)
  or from an installed `lpips` package (found, not imported). Without them every channel gets
  weight 1/C (the un-learned "baseline" distance of the LPIPS paper): the net says
  `calibrated = False` and its numbers are not comparable with the papers'.
- `dino` (DINO ViT, Caron et al., 2021): a transformers ViTModel; Structure Dist reads the keys of
  its last layer (Tumanyan et al., "Splicing ViT Features", 2022). Tiny: a 2-layer random ViT.
- `pickscore` (Kirstain et al., 2023): a CLIP-H model (`yuvalkirstain/PickScore_v1`) with the
  processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Tiny: the project's tiny CLIP.

Metric networks run in float32 whatever the cache's dtype: they are small and a metric should
not depend on the GPU's precision.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from engine.train.perceptual import tapped_activations, tiny_trunk as tiny_vgg_trunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_LPIPS = "tiny-lpips"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
EPS = 1e-10


# -- LPIPS ----------------------------------------------------------------------------------------
class LPIPSNet(nn.Module):
    """d(x, y) = sum_l 1/(H_l W_l) sum_hw sum_c w_lc (x^_lhwc - y^_lhwc)^2 (LPIPS Eq. 1), where x^ are
    the activations at tap l, unit-normalised along channels. As in the released weights, w
    multiplies the squared difference of each channel.

    net "alex": every ReLU is a tap (relu1..relu5); "vgg": the ReLU before each max-pool and the
    last one (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
    """

    def __init__(self, trunk: nn.Sequential, net: str, linear: Optional[Sequence[torch.Tensor]] = None,
                 source: str = ""):
        super().__init__()
        layers, taps, channels, c = [], [], [], None
        items = list(trunk)
        for i, layer in enumerate(items):
            if isinstance(layer, nn.Conv2d):
                c = layer.out_channels
            if isinstance(layer, nn.ReLU):
                layer = nn.ReLU(inplace=False)  # in-place ReLUs would overwrite tapped activations
                nxt = items[i + 1] if i + 1 < len(items) else None
                if net == "alex" or nxt is None or isinstance(nxt, nn.MaxPool2d):
                    taps.append(len(layers))
                    channels.append(c)
            layers.append(layer)
        if not taps:
            raise ValueError("the LPIPS trunk has no ReLU layer to take features from")
        self.features = nn.Sequential(*layers[:taps[-1] + 1])
        self.taps = taps
        self.net = net
        self.source = source
        self.calibrated = linear is not None
        if linear is None:
            linear = [torch.full((ch,), 1.0 / ch) for ch in channels]
        linear = [w.detach().float().flatten() for w in linear]
        if [w.numel() for w in linear] != channels:
            raise ValueError(f"the LPIPS linear weights have {[w.numel() for w in linear]} channels per layer, "
                             f"but the {net} trunk has {channels}")
        for l, w in enumerate(linear):
            self.register_buffer(f"lin{l}", w.clamp_min(0.0))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> activations at each tap. The LPIPS scaling layer is
        ImageNet normalisation written for [-1, 1] inputs, which is what this does."""
        x = ((x.float() + 1.0) / 2.0 - self.mean) / self.std
        return tapped_activations(self.features, self.taps, x)

    def layer_distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, L): the term of Eq. 1 for each layer."""
        out = []
        for l, (fa, fb) in enumerate(zip(self.activations(a), self.activations(b))):
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)  # unit length along channels
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)
            w = getattr(self, f"lin{l}").view(1, -1, 1, 1)
            out.append((w * (fa - fb).pow(2)).sum(dim=1).mean(dim=(1, 2)))
        return torch.stack(out, dim=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.layer_distances(a, b).sum(dim=1)


def build_tiny_lpips(out_dir: Path) -> None:
    """A random 5-stage VGG-like trunk (4-8 channels) with random non-negative linear weights."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = [4, 8, 8, 8, 8]
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(0)
        trunk = tiny_vgg_trunk(channels)
        linear = [torch.rand(c) for c in channels]
    tensors = {f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
    tensors.update({f"lin{l}": w for l, w in enumerate(linear)})
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({"architecture": TINY_LPIPS, "net": "vgg",
                                                     "channels": channels}))


def linear_weights_file(net: str) -> Optional[Path]:
    """Where the official LPIPS v0.1 linear weights for `net` are: DES_LPIPS_LINEAR, else an
    installed `lpips` package's data file, else None."""
    env = os.environ.get("DES_LPIPS_LINEAR")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ValueError(f"DES_LPIPS_LINEAR points to {env}, which is not a file")
        return path
    spec = importlib.util.find_spec("lpips")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "weights" / "v0.1" / f"{net}.pth"
        if path.is_file():
            return path
    return None


def read_linear_weights(path: Path) -> list[torch.Tensor]:
    """The released format: {"lin<l>.model.1.weight": (1, C, 1, 1)} for l = 0..4."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    keys = sorted((k for k in state if k.startswith("lin") and k.endswith("weight")),
                  key=lambda k: int(k[3:].split(".")[0]))
    if not keys:
        raise ValueError(f"{path} holds no LPIPS linear weights (keys lin<l>.model.1.weight)")
    return [state[k].float().flatten() for k in keys]


def _torchvision_trunk(path: Path) -> tuple[nn.Sequential, str]:
    import torchvision

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    convs = sum(1 for k in state if k.startswith("features.") and k.endswith(".weight"))
    if convs == 5:
        model, net = torchvision.models.alexnet(weights=None), "alex"
    elif convs == 13:
        model, net = torchvision.models.vgg16(weights=None), "vgg"
    else:
        raise ValueError(f"{path} is neither torchvision's AlexNet nor its VGG16 ({convs} convolutions)")
    model.load_state_dict(state)
    return model.features, net


def load_lpips(source: str, device: torch.device, dtype: torch.dtype) -> LPIPSNet:
    """A frozen LPIPSNet from a tiny folder, a torchvision state-dict file or a timm VGG16 (module doc)."""
    from safetensors.torch import load_file

    path = Path(str(source))
    config = path / "config.json"
    if path.is_dir() and config.is_file() and json.loads(config.read_text()).get("architecture") == TINY_LPIPS:
        cfg = json.loads(config.read_text())
        tensors = load_file(str(path / "model.safetensors"))
        trunk = tiny_vgg_trunk(cfg["channels"])
        trunk.load_state_dict({k.removeprefix("features."): v for k, v in tensors.items()
                               if k.startswith("features.")})
        linear = [tensors[f"lin{l}"] for l in range(len(cfg["channels"]))]
        net = LPIPSNet(trunk, cfg["net"], linear, source=str(source))
        net.calibrated = False  # random weights: nothing to compare with the papers
    else:
        if path.is_file():
            trunk, kind = _torchvision_trunk(path)
        else:
            import timm

            name = f"local-dir:{path}" if path.is_dir() else f"hf-hub:{source}"
            trunk, kind = timm.create_model(name, pretrained=True).features, "vgg"
        lin_file = linear_weights_file(kind)
        net = LPIPSNet(trunk, kind, read_linear_weights(lin_file) if lin_file else None, source=str(source))
    net = net.to(torch.device(device)).eval()
    net.requires_grad_(False)
    return net


# -- DINO ViT -------------------------------------------------------------------------------------
def build_tiny_dino(out_dir: Path) -> None:
    """A random 2-layer ViT (hidden 32, 2 heads, patch 8, 32 px) in transformers' ViTModel format."""
    from transformers import ViTConfig, ViTModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, qkv_bias=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(out_dir)


def load_dino(source: str, device: torch.device, dtype: torch.dtype):
    """A frozen transformers ViTModel (no pooler) in float32, from a hub id or a local folder."""
    from transformers import ViTModel

    model = ViTModel.from_pretrained(source, add_pooling_layer=False, dtype=torch.float32)
    model = model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    return model


def key_projection(vit) -> nn.Module:
    """The linear layer that makes the keys of the last transformer layer."""
    layers = getattr(vit, "layers", None)
    if layers is None:  # transformers 4 layout
        layers = vit.encoder.layer
    attention = layers[-1].attention
    for path in ("k_proj", "attention.key", "key"):
        module = attention
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Linear):
            return module
    raise ValueError("cannot find the key projection of the ViT's last layer")


# -- PickScore ------------------------------------------------------------------------------------
def load_pickscore(source: str, device: torch.device, dtype: torch.dtype):
    """PickScore's CLIP model as an engine.core.clip.ClipBundle. Its hub repository has no processor
    of its own; the one of the CLIP-H model it was fine-tuned from is used (DES_PICKSCORE_PROCESSOR)."""
    from transformers import CLIPModel, CLIPProcessor

    from engine.core.clip import ClipBundle

    model = CLIPModel.from_pretrained(source, dtype=torch.float32)
    try:
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = CLIPProcessor.from_pretrained(os.environ.get("DES_PICKSCORE_PROCESSOR", PICKSCORE_PROCESSOR))
    model = model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    return ClipBundle(model=model, processor=processor, source=str(source))
