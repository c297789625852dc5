"""Split a target text into a subject part and a background part, by rule (LayerDiffusion, Sec. 3.2.1).

"a dog jumping in a forest" -> T_a = "a dog jumping" (the subject and what it does),
T_b = "in a forest" (where). The rules, in order:

1. A verb anchors the subject: a word ending in -ing ("jumping") or a common verb form
   ("lies", "sits", "is"). The background starts at the first place preposition after it
   ("in", "on", "under", "in front of"...), so "a dog playing with a ball on the beach"
   keeps "with a ball" in the subject.
2. Without a verb, the background starts at the first place preposition after the first
   word ("a cat in the snow" -> "a cat" / "in the snow"). "with" and "of" describe the
   subject ("a dog with a red collar"), never the place.
3. A text that opens with a place ("in a forest, a dog jumping") is split at the comma.
4. Otherwise a comma or semicolon separates the two parts ("a dog jumping, snowy forest").

Anything else cannot be split: `split_text` raises ValueError and the user types the two
parts. `subject_phrase` turns T_a into the words a text-prompted segmenter should look for
("a big dog jumping" -> "big dog").
"""
from __future__ import annotations

import re
from typing import Optional

# Multi-word place prepositions first: they are matched before their first word alone.
_PLACE_PHRASES = (
    ("in", "front", "of"), ("on", "top", "of"), ("in", "the", "middle", "of"), ("at", "the", "edge", "of"),
    ("next", "to"), ("close", "to"), ("out", "of"), ("on", "the", "edge", "of"), ("in", "the", "midst", "of"),
)
_PLACE_WORDS = frozenset("""
in on at near under underneath beneath below above over behind beside besides by through across
along among amongst inside into onto around against amid amidst within outside atop upon past
toward towards alongside throughout
""".split())
# Words ending in -ing that are nouns or adjectives, not actions.
_NOT_VERBS_ING = frozenset("""
thing things something nothing anything everything king ring rings string wing wings ceiling
building buildings painting paintings clothing spring morning evening sing swing ping during
pudding wedding sibling siblings duckling ducklings earring earrings sling bing ling
""".split())
_VERBS = frozenset("""
is are was were be being sits sit stands stand lies lie lays lay jumps jump runs run walks walk
flies fly swims swim sleeps sleep plays play eats eat drinks drink rides ride holds hold wears wear
looks look stares stare rests rest leaps leap climbs climb dances dance reads read rolls roll
sat stood lay jumped ran walked flew swam slept played ate rode held wore looked
""".split())
_DETERMINERS = frozenset("a an the this that these those his her its their my our your one two some".split())
_FRAMES = (("a", "photo", "of"), ("a", "picture", "of"), ("an", "image", "of"), ("a", "painting", "of"),
           ("photo", "of"), ("picture", "of"), ("image", "of"))
_ATTRIBUTE_WORDS = frozenset({"with", "of", "wearing", "holding"})

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _words(text: str) -> list[str]:
    return text.split()


def _key(word: str) -> str:
    """Lower-case letters of a word, without surrounding punctuation."""
    m = _WORD.search(word)
    return m.group(0).lower() if m else ""


def _is_verb(word: str) -> bool:
    k = _key(word)
    if k in _VERBS:
        return True
    return len(k) > 4 and k.endswith("ing") and k not in _NOT_VERBS_ING


def _place_at(keys: list[str], i: int) -> int:
    """Length of the place preposition starting at word i (0 if none)."""
    for phrase in _PLACE_PHRASES:
        if tuple(keys[i:i + len(phrase)]) == phrase:
            return len(phrase)
    return 1 if keys[i] in _PLACE_WORDS else 0


def _clean(part: str) -> str:
    return " ".join(part.strip(" ,;:.").split())


def split_text(text: str) -> tuple[str, str]:
    """(T_a, T_b) by the rules in the module docstring; ValueError if the text cannot be split."""
    text = " ".join((text or "").split())
    if not text:
        raise ValueError("the target text is empty: describe the subject and the place, "
                         "e.g. 'a dog jumping in a forest'")
    words = _words(text)
    keys = [_key(w) for w in words]

    # 3. "in a forest, a dog jumping": the place first, then the subject after the comma.
    if _place_at(keys, 0) and "," in text:
        head, _, tail = text.partition(",")
        if _clean(head) and _clean(tail):
            return _clean(tail), _clean(head)

    # 1./2. The first place preposition after the verb (or after the first word).
    verb = next((i for i, w in enumerate(words) if i > 0 and _is_verb(w)), None)
    start = 1 if verb is None else verb + 1
    for i in range(start, len(words)):
        if _place_at(keys, i) and i < len(words) - 1:
            a, b = _clean(" ".join(words[:i])), _clean(" ".join(words[i:]))
            if a and b:
                return a, b

    # 4. An explicit separator.
    for sep in (";", ","):
        if sep in text:
            head, _, tail = text.partition(sep)
            if _clean(head) and _clean(tail):
                return _clean(head), _clean(tail)

    raise ValueError(f"could not split '{text}' into a subject part and a background part "
                     "(no place such as 'in a forest' or 'on a beach' was found); type the two "
                     "parts yourself, e.g. subject 'a dog jumping' and background 'in a forest'")


def resolve_split(text: str, subject: Optional[str] = None,
                  background: Optional[str] = None) -> tuple[str, str, str]:
    """(T, T_a, T_b): explicit parts win over the automatic split; a missing part comes from
    what is left of T once the given part is removed, else from the automatic split. With only
    a background given and a T that cannot be split, T_a is the whole of T."""
    text = " ".join((text or "").split())
    subject = _clean(subject or "")
    background = _clean(background or "")
    if subject and background:
        return text or f"{subject} {background}", subject, background
    if not text:
        raise ValueError("the target text is empty: describe the subject and the place, "
                         "e.g. 'a dog jumping in a forest'")
    given = subject or background
    if given:
        low, g = text.lower(), given.lower()
        rest = None
        if low.startswith(g):
            rest = _clean(text[len(given):])
        elif low.endswith(g):
            rest = _clean(text[:-len(given)])
        if rest:
            return (text, subject, rest) if subject else (text, rest, background)
    try:
        auto_a, auto_b = split_text(text)
    except ValueError:
        if not background:
            raise
        auto_a, auto_b = text, background  # a new place for the whole text: T_a is all of it
    return text, subject or auto_a, background or auto_b


def subject_phrase(subject_text: str) -> str:
    """The noun phrase to segment: T_a without a leading frame ("a photo of"), determiners,
    the verb and what follows it, and "with ..." attributes. "a big dog jumping" -> "big dog"."""
    words = _words(_clean(subject_text))
    keys = [_key(w) for w in words]
    for frame in _FRAMES:
        if tuple(keys[:len(frame)]) == frame:
            words, keys = words[len(frame):], keys[len(frame):]
            break
    end = len(words)
    for i, w in enumerate(words):
        if i > 0 and (_is_verb(w) or keys[i] in _ATTRIBUTE_WORDS or _place_at(keys, i)):
            end = i
            break
    head = [w for w, k in zip(words[:end], keys[:end]) if k and k not in _DETERMINERS]
    phrase = " ".join(_key(w) for w in head)
    return phrase or _clean(subject_text).lower()
