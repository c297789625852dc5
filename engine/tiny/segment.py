"""Tiny random-weight GroundingDINO, SAM and CLIPSeg for the `tiny` profile and the tests.

Each builder writes a model AND its processor into `out_dir` with `save_pretrained`, so the
loaders in `engine.core.segment` read them back through the same `from_pretrained` code as
the real weights. Everything is built in code, offline, with a fixed seed:
- GroundingDINO: a 4-stage Swin backbone (embed 16), a 1-layer BERT (hidden 32), d_model 32,
  10 queries, 1 encoder / 2 decoder layers (the decoder needs at least 2); the image
  processor resizes to 128 px shortest / 192 px longest edge (smaller inputs break it).
- SAM: a 2-layer ViT on 64 px inputs (patch 8 -> an 8x8 embedding), hidden 32; the
  processor resizes the longest edge to 64 and pads to 64x64.
- CLIPSeg: 2-layer text and 3-layer vision CLIP (hidden 32) on 64 px inputs, reduce_dim 16.
A forward pass of each takes well under a second on two CPU cores. Their outputs are noise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.tiny.tokenizer import write_byte_level_clip_tokenizer

# BERT-base-uncased ids that GroundingDINO hard-codes as its special tokens
# ([CLS], [SEP], ".", "?"); the tiny vocabulary puts the same tokens at the same ids so
# the model splits phrases at "." exactly as the real one does.
_BERT_FIXED_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                   1012: ".", 1029: "?"}

# Words for the tiny BERT vocabulary: objects, places, colours, positions, common verbs.
_WORDS = """
the a an of on in at to with and or by for from near next behind under over above below
left right top bottom front back middle center centre side corner first second third big
small large little tall short long wide old young new this that these those its his her
their is are one two three four five some all other
cat cats dog dogs horse horses zebra cow sheep bird birds fish bear elephant giraffe lion
tiger monkey rabbit mouse duck chicken puppy kitten animal animals pet
person people man men woman women boy girl child children baby kid face head hair eye eyes
nose mouth ear hand hands arm arms leg legs foot feet body shirt dress hat cap glasses
sunglasses jacket coat shoe shoes bag
bus car cars truck train bike bicycle motorcycle boat ship airplane plane rocket wheel
road street sign light traffic bridge building house window door roof wall fence tower
city town shop
tree trees grass flower flowers plant plants leaf leaves bush forest field garden park
mountain mountains hill rock rocks stone sand beach sea ocean water river lake wave waves
sky cloud clouds sun moon snow ice rain fire smoke ground floor
table chair sofa couch bed lamp clock book books cup mug glass bottle plate bowl food
fruit apple banana orange cake pizza bread coffee tea phone laptop computer screen
keyboard television tv picture painting photo frame mirror box ball toy kite umbrella
red green blue yellow orange purple pink brown black white gray grey dark bright golden
silver
sitting standing running jumping walking flying swimming eating lying holding wearing
riding looking playing
background foreground object thing stuff part piece area region
""".split()


def _bert_vocab() -> list[str]:
    """BERT vocabulary lines: fixed special ids, words, and [unusedN] fillers in the gaps."""
    words = [w for w in dict.fromkeys(_WORDS) if w not in _BERT_FIXED_IDS.values()]
    words += [",", "'", "-", "!"]
    size = max(max(_BERT_FIXED_IDS) + 1, len(words) + len(_BERT_FIXED_IDS) + 1)
    lines: list[str] = []
    pending = iter(words)
    unused = 0
    for i in range(size):
        if i in _BERT_FIXED_IDS:
            lines.append(_BERT_FIXED_IDS[i])
            continue
        # Real BERT keeps ids 1..99 for [unusedN]; do the same, then fill with words.
        word = next(pending, None) if i > 103 else None
        if word is None:
            word = f"[unused{unused}]"
            unused += 1
        lines.append(word)
    return lines


def build_tiny_grounding_dino(out_dir: Path) -> None:
    """Write a tiny random GroundingDinoForObjectDetection + GroundingDinoProcessor to out_dir."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig,
                              GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor, SwinConfig)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab()
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(out_dir / "vocab.txt"), do_lower_case=True,
                              model_max_length=64)

    backbone = SwinConfig(image_size=128, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=10,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
        decoder_n_points=2, num_feature_levels=4, max_text_len=32)
    with torch.random.fork_rng(devices=[]):  # seed without touching the caller's RNG
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(config).eval()

    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_tiny_sam(out_dir: Path) -> None:
    """Write a tiny random SamModel + SamProcessor (64 px inputs) to out_dir."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel,
                              SamProcessor, SamPromptEncoderConfig, SamVisionConfig)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_size, patch, hidden = 64, 8, 32
    # SAM's shapes must agree: the prompt encoder's positional features are hidden/2 wide,
    # and its embedding grid is image_size / patch_size.
    vision = SamVisionConfig(hidden_size=32, output_channels=hidden, num_hidden_layers=2,
                             num_attention_heads=2, image_size=image_size, patch_size=patch,
                             window_size=4, global_attn_indexes=[1], num_pos_feats=hidden // 2,
                             mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=hidden, image_size=image_size, patch_size=patch,
                                    mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=64, num_hidden_layers=2,
                                   num_attention_heads=2, iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                       mask_decoder_config=decoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SamModel(config).eval()

    low_res = image_size // 4  # SAM's low-resolution masks are a quarter of the input size
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res}, mask_pad_size={"height": low_res, "width": low_res})
    processor = SamProcessor(image_processor=image_processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_tiny_clipseg(out_dir: Path) -> None:
    """Write a tiny random CLIPSegForImageSegmentation + CLIPSegProcessor (64 px) to out_dir."""
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor,
                              CLIPSegTextConfig, CLIPSegVisionConfig, CLIPTokenizer,
                              ViTImageProcessor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE files (vocab.json, merges.txt) written by the project's own helper.
    vocab_size = write_byte_level_clip_tokenizer(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(out_dir)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])

    text = CLIPSegTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                             pad_token_id=eos)
    vision = CLIPSegVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=2, image_size=64, patch_size=16)
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16,
                           extract_layers=[0, 1, 2], reduce_dim=16,
                           decoder_num_attention_heads=2, decoder_intermediate_size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPSegForImageSegmentation(config).eval()

    # The real CLIPSeg processor squashes the photo to a square with CLIP's normalisation.
    image_processor = ViTImageProcessor(size={"height": 64, "width": 64},
                                        image_mean=[0.48145466, 0.4578275, 0.40821073],
                                        image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
