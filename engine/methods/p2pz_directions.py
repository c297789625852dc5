"""pix2pix-zero's edit directions (Sec. 3.2): Delta c_edit = mean CLIP embedding of a sentence bank
for the target minus that of the source.

- Banks come from the templates below (60 sentences per word, the word slotted in; the paper's
  "predefined prompts around source and target") or from sentences the user pastes, one a line.
- Embeddings are SD's own text encoder outputs, the full (77, dim) sequence, averaged over the bank.
- Each bank's mean embedding is cached on disk per (model identity, bank hash) under
  `models.cache_dir / "directions"` as safetensors, so cat -> dog and dog -> cat share their banks.
- Everything is validated before anything is computed or written: empty or identical words,
  words the tokenizer turns into nothing or that push a sentence past the 77-token window, a
  pasted list with no sentences. A bad request never leaves a file behind.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from engine.core.sampling import encode_prompts

Sentences = Union[str, Sequence[str], None]

# Ready directions offered by the picker (source, target).
READY: tuple[tuple[str, str], ...] = (
    ("cat", "dog"),
    ("dog", "cat"),
    ("horse", "zebra"),
    ("zebra", "horse"),
    ("cat", "cat wearing sunglasses"),
    ("dog", "dog wearing sunglasses"),
    ("tree", "tree in autumn"),
    ("tree", "tree in winter"),
    ("photo", "watercolor painting"),
    ("photo", "oil painting"),
    ("sketch", "oil pastel"),
    ("horse", "goat"),
)

# Sentence templates; "{a}" becomes the word with its article ("a cat", "an oil pastel").
TEMPLATES: tuple[str, ...] = (
    "a photo of {a}.", "a picture of {a}.", "a close-up photo of {a}.", "a blurry photo of {a}.",
    "a bright photo of {a}.", "a dark photo of {a}.", "a cropped photo of {a}.", "a good photo of {a}.",
    "a black and white photo of {a}.", "an old photo of {a}.", "a low resolution photo of {a}.",
    "a high resolution image of {a}.", "a jpeg image of {a}.", "a snapshot of {a} taken outdoors.",
    "a detailed image of {a}.", "a simple image of {a}.", "a colorful image of {a}.", "a portrait of {a}.",
    "a wide shot of {a}.", "a centered photo of {a}.", "a candid shot of {a}.", "there is {a} in this picture.",
    "this image shows {a}.", "{a} in the garden.", "{a} on the grass.", "{a} in the morning light.",
    "{a} seen from above.", "{a} in front of a white wall.", "{a} near a window.", "{a} at the park.",
    "{a} in a living room.", "{a} on a sunny day.", "{a} on a rainy day.", "{a} in the snow.",
    "{a} at night.", "{a} by the sea.", "{a} in a forest.", "{a} on a city street.",
    "{a} on a wooden table.", "{a} next to a chair.", "{a}, shot on film.", "{a}, digital photograph.",
    "{a}, studio lighting.", "{a}, natural light.", "{a}, high detail.", "a small {w}.", "a big {w}.",
    "a beautiful {w}.", "a cute {w}.", "a single {w} in the middle of the frame.", "my favourite {w}.",
    "a {w} under a blue sky.", "a {w} in soft focus.", "a {w} from the side.", "a {w} up close.",
    "a picture of the {w} we saw yesterday.", "the {w} in the photo looks calm.", "one {w}, nothing else.",
    "a {w} in the shade.", "a magazine photo of {a}.",
)

_ARTICLES = ("a ", "an ", "the ", "one ", "some ", "two ", "three ", "my ", "his ", "her ", "their ")
MAX_WORD_CHARS = 100
MAX_SENTENCES = 1000
MAX_SENTENCE_CHARS = 500


def with_article(word: str) -> str:
    """'cat' -> 'a cat', 'oil pastel' -> 'an oil pastel'; words that bring their own determiner stay."""
    if word.lower().startswith(_ARTICLES):
        return word
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def sentences_for(word: str) -> list[str]:
    """The template bank for one word (len(TEMPLATES) sentences)."""
    a = with_article(word)
    bare = word
    for det in _ARTICLES:  # "a small {w}" must not become "a small a cat"
        if word.lower().startswith(det) and len(word) > len(det):
            bare = word[len(det):]
            break
    out = []
    for template in TEMPLATES:
        text = template.replace("{a}", a).replace("{w}", bare)
        out.append(text[0].upper() + text[1:] if template.startswith("{a}") else text)
    return out


def parse_sentences(text: Sentences, name: str) -> Optional[list[str]]:
    """Pasted sentences, one a line (a string) or a list; None / blank means "use the templates".

    Lines are stripped, blank lines and lines starting with '#' dropped. Raises ValueError if text
    was given but holds no sentence, or too many / too long ones.
    """
    if text is None:
        return None
    if isinstance(text, str):
        if not text.strip():
            return None
        lines = text.splitlines()
    else:
        lines = list(text)
        if not lines:
            raise ValueError(f"the {name} sentence list is empty: paste one sentence a line")
    out = []
    for line in lines:
        if not isinstance(line, str):
            raise ValueError(f"the {name} sentences must be text, got {type(line).__name__}")
        line = " ".join(line.split())
        if line and not line.startswith("#"):
            if len(line) > MAX_SENTENCE_CHARS:
                raise ValueError(f"a {name} sentence is longer than {MAX_SENTENCE_CHARS} characters: {line[:40]!r}...")
            out.append(line)
    if not out:
        raise ValueError(f"the {name} sentence list holds no sentences: paste one sentence a line")
    if len(out) > MAX_SENTENCES:
        raise ValueError(f"the {name} sentence list has {len(out)} sentences; at most {MAX_SENTENCES}")
    return out


def check_word(tokenizer, word, name: str) -> str:
    """A word or short phrase the tokenizer can place; ValueError with the reason otherwise."""
    if word is None:
        word = ""
    if not isinstance(word, str):
        raise ValueError(f"the {name} word must be text, got {type(word).__name__}")
    word = " ".join(word.split()).strip(" .,;:")
    if not word:
        raise ValueError(f"the {name} word is empty: type a word such as 'cat'")
    if len(word) > MAX_WORD_CHARS:
        raise ValueError(f"the {name} word is too long ({len(word)} characters, at most {MAX_WORD_CHARS})")
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the tokenizer cannot place the {name} word {word!r}: it becomes no token at all")
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    if specials & set(ids):  # "<|endoftext|>" typed in, or a token the vocabulary does not know
        raise ValueError(f"the tokenizer cannot place the {name} word {word!r}: it becomes a special or unknown "
                         f"token")
    return word


def check_bank(tokenizer, sentences: list[str], name: str) -> None:
    """Every sentence must give tokens and fit the text encoder's window (no silent truncation)."""
    limit = tokenizer.model_max_length
    ids = tokenizer(list(sentences), add_special_tokens=True, truncation=False).input_ids
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for sentence, seq in zip(sentences, ids):
        if not [i for i in seq if i not in specials]:
            raise ValueError(f"the tokenizer cannot place the {name} sentence {sentence!r}: it becomes no token at all")
        if len(seq) > limit:
            raise ValueError(f"the {name} sentence {sentence[:60]!r} is {len(seq)} tokens long; the text encoder "
                             f"reads at most {limit} (use a shorter word or sentence)")


@dataclass(frozen=True)
class Bank:
    """A validated sentence bank for one side of a direction."""

    label: str
    sentences: tuple[str, ...]
    from_templates: bool

    @property
    def digest(self) -> str:
        return hashlib.sha1("\n".join(self.sentences).encode("utf-8")).hexdigest()


def make_bank(tokenizer, word, sentences: Sentences, name: str) -> Bank:
    """The bank for one side: pasted sentences if given, else the templates around `word`."""
    pasted = parse_sentences(sentences, name)
    if pasted is not None:
        label = " ".join(word.split()) if isinstance(word, str) and word.strip() else f"{len(pasted)} pasted sentences"
        check_bank(tokenizer, pasted, name)
        return Bank(label, tuple(pasted), False)
    word = check_word(tokenizer, word, name)
    bank = sentences_for(word)
    check_bank(tokenizer, bank, name)
    return Bank(word, tuple(bank), True)


def make_banks(tokenizer, source, target, source_sentences: Sentences = None,
               target_sentences: Sentences = None) -> tuple[Bank, Bank]:
    """Both banks, validated; identical words or banks are refused (the direction would be zero)."""
    src = make_bank(tokenizer, source, source_sentences, "source")
    tgt = make_bank(tokenizer, target, target_sentences, "target")
    if src.from_templates and tgt.from_templates and src.label.lower() == tgt.label.lower():
        raise ValueError(f"source and target are the same word ({src.label!r}): pick two different words")
    if [s.lower() for s in src.sentences] == [s.lower() for s in tgt.sentences]:
        raise ValueError("the source and target sentences are the same: the edit direction would be zero")
    return src, tgt


# -- embeddings and the disk cache ----------------------------------------------------------------
_FINGERPRINTS: dict[int, tuple] = {}  # id(text encoder) -> (weakref to it, fingerprint)
_LOCK = threading.Lock()


def model_identity(models, sd) -> str:
    """Profile, source, dtype and a fingerprint of the text encoder's token embeddings."""
    key = id(sd.text_encoder)
    known = _FINGERPRINTS.get(key)
    if known is None or known[0]() is not sd.text_encoder:
        weight = sd.text_encoder.get_input_embeddings().weight
        fp = f"{float(weight.float().sum()):.6e}:{float(weight.float().abs().mean()):.6e}:{tuple(weight.shape)}"
        known = _FINGERPRINTS[key] = (weakref.ref(sd.text_encoder), fp)
    text = f"{models.profile}|{sd.source}|{models.dtype}|{known[1]}"
    return hashlib.sha1(text.encode()).hexdigest()


@torch.no_grad()
def bank_embedding(sd, sentences: Sequence[str], batch: int = 32) -> torch.Tensor:
    """Mean text embedding of the sentences: (77, dim), float32 (Sec. 3.2's mean CLIP embedding)."""
    total = None
    for i in range(0, len(sentences), batch):
        emb = encode_prompts(sd, list(sentences[i:i + batch])).float().sum(0)
        total = emb if total is None else total + emb
    return total / len(sentences)


def _cache_path(models, sd, bank: Bank) -> Path:
    return Path(models.cache_dir) / "directions" / f"{model_identity(models, sd)[:16]}-{bank.digest[:24]}.safetensors"


def cached_bank_embedding(models, sd, bank: Bank) -> tuple[torch.Tensor, bool]:
    """(mean embedding on the model's device, whether it came from the disk cache)."""
    from safetensors.torch import load_file, save_file

    path = _cache_path(models, sd, bank)
    dim = sd.text_encoder.config.hidden_size
    shape = (sd.tokenizer.model_max_length, dim)
    if path.is_file():
        try:
            mean = load_file(str(path))["mean"]
            if tuple(mean.shape) == shape and torch.isfinite(mean).all():
                return mean.to(models.device), True
        except Exception:  # a damaged file is recomputed and replaced
            pass
    mean = bank_embedding(sd, bank.sentences)
    if tuple(mean.shape) != shape or not torch.isfinite(mean).all():
        raise ValueError("the text encoder returned an unusable embedding for this sentence bank")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"mean": mean.detach().cpu().contiguous()}, tmp,
                      metadata={"label": bank.label[:200], "sentences": str(len(bank.sentences)),
                                "first": bank.sentences[0][:200]})
            os.replace(tmp, path)  # atomic: readers never see half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return mean, False


@dataclass
class Direction:
    """Delta c_edit (1, 77, dim), float32, and how it was made."""

    delta: torch.Tensor
    source: Bank
    target: Bank
    cached: tuple[bool, bool]

    def describe(self) -> dict:
        return {"source": self.source.label, "target": self.target.label,
                "source_sentences": len(self.source.sentences), "target_sentences": len(self.target.sentences),
                "source_from_templates": self.source.from_templates,
                "target_from_templates": self.target.from_templates,
                "direction_norm": round(float(self.delta.norm()), 4),
                "direction_cached": list(self.cached)}


def edit_direction(models, source, target, source_sentences: Sentences = None,
                   target_sentences: Sentences = None) -> Direction:
    """Delta c_edit = mean(E(target bank)) - mean(E(source bank)) (Sec. 3.2, Fig. 2)."""
    sd = models.sd()
    src, tgt = make_banks(sd.tokenizer, source, target, source_sentences, target_sentences)
    return direction_from_banks(models, sd, src, tgt)


def direction_from_banks(models, sd, src: Bank, tgt: Bank) -> Direction:
    """Delta c_edit for two banks already validated by make_banks."""
    src_mean, src_hit = cached_bank_embedding(models, sd, src)
    tgt_mean, tgt_hit = cached_bank_embedding(models, sd, tgt)
    return Direction((tgt_mean - src_mean)[None], src, tgt, (src_hit, tgt_hit))


def ready_labels() -> list[str]:
    return [f"{s} → {t}" for s, t in READY]


def parse_label(label: str) -> tuple[str, str]:
    """'cat → dog' (or 'cat -> dog') -> ('cat', 'dog')."""
    parts = re.split(r"\s*(?:→|->)\s*", label or "", maxsplit=1)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"not a direction: {label!r} (expected 'source → target')")
    return parts[0].strip(), parts[1].strip()
