"""SD1.5-shaped models with random weights, built in code and written with `save_pretrained`.

`build_tiny_sd` makes a small model (fast on a CPU, for tests and the offline demo);
`build_sd15_shape` makes the full SD1.5 architecture (for honest timings on a GPU). Both
write the same folder layout as the hub repository, so `engine.models.load_sd` loads them
with the same `from_pretrained` code as the real weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.tiny.tokenizer import write_byte_level_clip_tokenizer

# Stable Diffusion 1.5's noise schedule (its scheduler_config.json), used by every profile.
SD15_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def _write_common(out_dir: Path, text_cfg: dict) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    tok_dir = out_dir / "tokenizer"
    vocab_size = write_byte_level_clip_tokenizer(tok_dir)
    size = max(vocab_size, text_cfg.get("vocab_size", 0))
    # The tokenizer's last two ids are <|startoftext|> and <|endoftext|> (49406, 49407 in SD1.5).
    text_cfg = dict(text_cfg, vocab_size=size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                    pad_token_id=vocab_size - 1)
    CLIPTextModel(CLIPTextConfig(**text_cfg)).save_pretrained(out_dir / "text_encoder")
    (out_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=1))
    (out_dir / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def build_tiny_sd(out_dir: Path) -> None:
    """A tiny SD1.5-shaped model: 8x VAE, cross-attention UNet, CLIP text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    out_dir = Path(out_dir)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32,
    ).save_pretrained(out_dir / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    ).save_pretrained(out_dir / "vae")
    _write_common(out_dir, dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=32,
    ))


def build_sd15_shape(out_dir: Path) -> None:
    """The full SD1.5 architecture (860M UNet, KL-f8 VAE, CLIP ViT-L/14 text encoder), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    out_dir = Path(out_dir)
    # Default UNet2DConditionModel config is SD1.x's, apart from the cross-attention width.
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).half().save_pretrained(out_dir / "unet")
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).half().save_pretrained(out_dir / "vae")
    _write_common(out_dir, dict(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408,
    ))
