"""A CLIP tokenizer that works offline: byte-level BPE with every byte as a symbol.

Real SD1.5 ships its own vocabulary; tiny models need one that tokenizes any text without
the hub. This one has the 256 byte-level symbols, their end-of-word forms, a merge for
every pair of lowercase letters that common words need (so short words become a few
tokens), and the two special tokens. Same file format as the real `vocab.json`/`merges.txt`.
"""
from __future__ import annotations

import json
from pathlib import Path

# Words whose merges we add so they tokenize into a single token (handy in tests and demos).
COMMON_WORDS = (
    "a an the of in on at with and photo picture painting sketch cat dog horse zebra tree "
    "fall autumn sunglasses glasses wearing watercolor oil pastel person man woman car bus "
    "airplane bird sky grass forest beach city red green blue brown white black jumping "
    "sitting running standing"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def write_byte_level_clip_tokenizer(out_dir: Path) -> int:
    """Write vocab.json, merges.txt and tokenizer config to `out_dir`; return the vocabulary size."""
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in COMMON_WORDS:
        # Merge left to right: ((c, a), t</w>) -> "cat</w>"; each intermediate becomes a token.
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77)
    tok.save_pretrained(out_dir)
    return len(vocab)
