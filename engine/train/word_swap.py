"""iEdit's edit prompts (Sec. 3.1): replace exactly one noun or adjective of a caption with an
antonym or a co-hyponym ("a blue and orange bus" -> "a blue and orange train").

Two sources of replacements:
- `WordNetLexicon`: nltk's WordNet. Adjectives -> their antonyms (through the head synset for
  satellite adjectives); nouns -> co-hyponyms (the other hyponyms of the word's hypernyms,
  for its two most common senses) and antonyms. Needs the corpus:
  `python -m nltk.downloader wordnet` (once, with internet).
- `JsonLexicon`: a small JSON file, {"nouns": {"horse": ["zebra", "cow"]},
  "adjectives": {"red": ["blue", "green"]}} (a flat {"word": [...]} counts as nouns).

`swap_one_word(caption, lexicon, rng)` picks one swappable word at random (seeded `random.Random`)
and returns the edit prompt with exactly that word replaced, and the "difference prompts"
y^diff of Sec. 3.4: the word, with the noun it describes when it is an adjective.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

# Words never swapped: articles, prepositions, and the framing words of captions.
STOP = set("""
a an the of in on at to with and or by for from into onto over under near next up down out off
is are be it its this that these those there here his her their some one two three four five
photo photograph picture image view close shot top front back side background foreground
""".split())
WORDNET_HELP = ("WordNet is not installed for nltk: run `python -m nltk.downloader wordnet` once "
                "(needs internet), or pass --lexicon FILE.json with "
                '{"nouns": {"horse": ["zebra"]}, "adjectives": {"red": ["blue"]}}')
_WORD = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*?)(\W*)$")


class Lexicon(Protocol):
    def options(self, word: str) -> tuple[str, list[str]]:
        """(part of speech, replacements) for a lower-case word; ("", []) when none."""

    def is_noun(self, word: str) -> bool: ...


@dataclass
class Swap:
    edit_prompt: str
    index: int          # position of the word in caption.split()
    source_word: str
    target_word: str
    pos: str            # "noun" or "adjective"
    source_diff: str    # y_1^diff: the word (+ the noun it describes)
    target_diff: str    # y_2^diff


class JsonLexicon:
    def __init__(self, path):
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no lexicon file at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        if "nouns" in data or "adjectives" in data:
            nouns, adjectives = data.get("nouns") or {}, data.get("adjectives") or {}
        else:
            nouns, adjectives = data, {}
        self.table: dict[str, tuple[str, list[str]]] = {}
        for pos, table in (("noun", nouns), ("adjective", adjectives)):
            for word, subs in table.items():
                # Single words only: the edit prompt must differ from the caption by exactly one word.
                subs = [s.lower() for s in subs
                        if isinstance(s, str) and len(s.split()) == 1 and s.lower() != word.lower()]
                if subs:
                    self.table[word.lower()] = (pos, subs)
        if not self.table:
            raise ValueError(f"{path}: the lexicon has no word with replacements")
        self.nouns = {w.lower() for w in nouns} | {s.lower() for v in nouns.values() for s in v}

    def options(self, word: str) -> tuple[str, list[str]]:
        return self.table.get(word, ("", []))

    def is_noun(self, word: str) -> bool:
        return word in self.nouns


class WordNetLexicon:
    def __init__(self):
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
        except LookupError:
            raise ValueError(WORDNET_HELP) from None
        self.wn = wordnet

    @staticmethod
    def _clean(names, word: str) -> list[str]:
        out = {n.lower() for n in names if n.isalpha() and len(n) >= 3 and n.lower() != word}
        return sorted(out)

    def options(self, word: str) -> tuple[str, list[str]]:
        wn = self.wn
        antonyms = []
        for s in wn.synsets(word, pos=wn.ADJ):
            heads = [s] + (s.similar_tos() if s.pos() == "s" else [])
            for h in heads:
                antonyms += [a.name() for lemma in h.lemmas() for a in lemma.antonyms()]
        adj = self._clean(antonyms, word)
        if adj:
            return "adjective", adj
        names = []
        for s in wn.synsets(word, pos=wn.NOUN)[:2]:
            names += [a.name() for lemma in s.lemmas() for a in lemma.antonyms()]
            for h in s.hypernyms() + s.instance_hypernyms():
                names += [c.lemmas()[0].name() for c in h.hyponyms() if c != s]
        nouns = self._clean(names, word)
        return ("noun", nouns) if nouns else ("", [])

    def is_noun(self, word: str) -> bool:
        return bool(self.wn.synsets(word, pos=self.wn.NOUN))


def load_lexicon(path: Optional[str]) -> Lexicon:
    return JsonLexicon(path) if path else WordNetLexicon()


def _split(token: str) -> Optional[tuple[str, str, str]]:
    m = _WORD.match(token)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _cased(new: str, old: str) -> str:
    return new.capitalize() if old[:1].isupper() else new


def swap_one_word(caption: str, lexicon: Lexicon, rng: random.Random) -> Optional[Swap]:
    """The caption with exactly one noun/adjective replaced, or None when no word can be swapped."""
    tokens = caption.split()
    candidates = []
    for i, token in enumerate(tokens):
        parts = _split(token)
        if parts is None or parts[1].lower() in STOP:
            continue
        pos, subs = lexicon.options(parts[1].lower())
        # A replacement must differ from every word already in the caption, or the edit is a no-op.
        subs = [s for s in subs if s not in {t.lower() for t in tokens}]
        if subs:
            candidates.append((i, parts, pos, subs))
    if not candidates:
        return None
    i, (pre, word, post), pos, subs = rng.choice(candidates)
    new = rng.choice(sorted(subs))
    edited = tokens[:i] + [pre + _cased(new, word) + post] + tokens[i + 1:]
    source_diff, target_diff = word.lower(), new
    if pos == "adjective" and i + 1 < len(tokens):
        nxt = _split(tokens[i + 1])
        # Sec. 3.4: an adjective's difference prompt carries the noun it describes.
        if nxt and nxt[1].lower() not in STOP and lexicon.is_noun(nxt[1].lower()):
            source_diff, target_diff = f"{source_diff} {nxt[1].lower()}", f"{target_diff} {nxt[1].lower()}"
    return Swap(" ".join(edited), i, word.lower(), new, pos, source_diff, target_diff)
