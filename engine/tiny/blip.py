"""A tiny random BLIP captioner for the `tiny` profile and the tests.

BlipForConditionalGeneration with a 2-layer ViT (32 px inputs, patch 8) and a 2-layer BERT-style
text decoder (hidden 32), plus a BlipProcessor built offline: a BertTokenizer over a hand-written
vocab.txt (BLIP's special ids: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, and the
decoder's start token [DEC]) and a BlipImageProcessor that resizes to 32x32. Both are written with
`save_pretrained`, so `engine.core.caption.load_blip` reads them back like the real weights.
Random weights caption nonsense; generation still ends (callers pass max_new_tokens).
"""
from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 32

_SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}

# Words a caption of an everyday photo might use (more than 100, so no [unusedN] slot is left).
_WORDS = """
a an the of on in at with and near next to by its is are there this
cat cats dog dogs horse zebra bird animal kitten puppy person man woman child
tree trees grass flower field forest garden park sky cloud water sea beach road street
house wall window door table chair sofa bed floor room city car bus bike
photo picture painting sketch drawing image close up view
sitting standing lying looking walking running wearing holding
red green blue yellow brown black white gray orange pink
small big little large old young fluffy striped
""".split()


def _vocab() -> list[str]:
    """BLIP's special ids where BERT has them, words in every other slot, then [DEC]."""
    words = [w for w in dict.fromkeys(_WORDS)] + [".", ",", "'", "-"]
    size = max(len(words) + len(_SPECIAL), max(_SPECIAL) + 1)
    pending = iter(words)
    lines = [_SPECIAL[i] if i in _SPECIAL else next(pending, f"[unused{i}]") for i in range(size)]
    lines.append("[DEC]")  # BLIP's decoder start token (bos), last id
    return lines


def build_tiny_blip(out_dir: Path) -> None:
    """Write a tiny random BlipForConditionalGeneration + BlipProcessor to out_dir (fixed seed)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(out_dir / "vocab.txt"), do_lower_case=True, bos_token="[DEC]",
                              model_max_length=64)
    dec_id = vocab.index("[DEC]")
    text = dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                bos_token_id=dec_id, eos_token_id=102, sep_token_id=102, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8, projection_dim=32)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    with torch.random.fork_rng(devices=[]):  # seed without touching the caller's RNG
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
