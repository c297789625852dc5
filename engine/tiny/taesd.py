"""Random stand-ins for TAESD (madebyollin/taesd, diffusers' AutoencoderTiny): the tiny
autoencoder that decodes SD1.5 latents to a preview image in one small network, written with
`save_pretrained` and loaded by `engine.models.load_taesd` like the real weights."""
from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_taesd(out_dir: Path) -> None:
    """A small AutoencoderTiny: 16 channels, one block per level (the same 8x up/down sampling)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    model = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # mid-grey noise that follows the latents, not a saturated black image
        last.weight.mul_(8.0)
        last.bias.fill_(0.5)
    model.save_pretrained(out_dir)


def build_taesd_shape(out_dir: Path) -> None:
    """TAESD's own architecture (diffusers' AutoencoderTiny defaults: 64 channels, 2.4 M parameters)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    AutoencoderTiny().half().save_pretrained(out_dir)
