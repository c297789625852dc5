"""A tiny random CLIPModel + CLIPProcessor for the `tiny` profile and the tests.

2-layer text and vision transformers (hidden 32, projection 16) on 32 px images (patch 8),
the project's byte-level CLIP tokenizer, a CLIPImageProcessor that resizes to 32 px and
centre-crops 32x32. Written with `save_pretrained`, so `engine.core.clip.load_clip` reads it
through the same `from_pretrained` code as the real weights. Outputs are noise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.tiny.tokenizer import write_byte_level_clip_tokenizer

IMAGE_SIZE = 32


def build_tiny_clip(out_dir: Path) -> None:
    """Write a tiny random CLIPModel and its CLIPProcessor to `out_dir`."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = write_byte_level_clip_tokenizer(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(out_dir)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
