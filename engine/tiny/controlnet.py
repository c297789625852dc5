"""Random ControlNets shaped like the profile's UNet (3-channel conditioning image)."""
from __future__ import annotations

from pathlib import Path

import torch


def _build_from_sd(out_dir: Path, sd_builder, conditioning_channels: int = 3) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    sd_dir = Path(out_dir) / "_unet_source"
    sd_builder(sd_dir)
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels)
    # from_unet zero-initialises the output convolutions; random ones make tiny tests meaningful.
    with torch.no_grad():
        for p in controlnet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    controlnet.save_pretrained(out_dir)
    import shutil

    shutil.rmtree(sd_dir)


def build_tiny_controlnet(out_dir: Path) -> None:
    from engine.tiny.sd import build_tiny_sd

    _build_from_sd(out_dir, build_tiny_sd)


def build_full_controlnet(out_dir: Path) -> None:
    from engine.tiny.sd import build_sd15_shape

    _build_from_sd(out_dir, build_sd15_shape)
