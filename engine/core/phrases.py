"""A small rule-based noun-phrase extractor: which region of the photo a prompt talks about.

IIR-Net localises its region of interest with Grounded-SAM from the prompt (Sec. 3.2); the
detector wants the *object*, not the attribute being edited: "a green airplane" -> "airplane".
No tagger or model is used (nltk's tagger needs data files that cannot be downloaded here);
the rules are deliberately simple and meant for short editing prompts:

1. Lower-case; split at punctuation (, ; : . ! ?) and keep the first clause.
2. The subject phrase ends at the first preposition or verb ("on", "with", "is", ...) or at a
   participle ("-ing"/"-ed") that follows a word already kept ("a woman skiing on grass").
3. Leading determiners, numbers and quantifiers are dropped ("a", "the", "two", "some").
4. Attribute words (colours, materials, sizes, textures, weather) are dropped unless they are
   the last word, which is the head noun: "a green orange" -> "orange", "red apples" -> "apples";
   trailing attributes after a noun are a predicate: "make the car red" -> "car".
5. A phrase whose head is a scene or style word ("sunset", "winter", "style") or that is made
   only of attribute words names no object: the function returns None, and the caller asks
   for a mask, a region phrase or the whole image. Attribute words alone ("green") also give
   None unless a determiner makes them a noun ("an orange").
6. "a photo of a red car": after a frame noun (photo, painting, ...) and "of", the object
   that follows is taken -> "car". Only the first noun phrase is kept ("a cat and a dog" -> "cat").

Compound nouns survive ("a tennis player in a yellow shirt" -> "tennis player").
"""
from __future__ import annotations

import re
from typing import Optional

DETERMINERS = set("""
a an the this that these those some any each every my your his her its our their another
one two three four five six seven eight nine ten several many few both all no
""".split())

# Words that end the subject phrase: prepositions, conjunctions, auxiliaries and common verbs.
BOUNDARIES = set("""
in on at with without under over above below near by of from into onto behind beside besides
next inside outside through across against along around among between during for to toward
towards beneath underneath upon via like and or but while as than
is are was were be been being am has have had do does did can could will would should may
might must looks look looking stands stand sits sit lies lie flies fly runs run walks walk
holds hold wears wear rides ride eats eat plays play covered made filled full
make turn change convert paint transform replace edit give add let render show
""".split())

# "a photo of a cat": the object follows "of".
FRAME_NOUNS = set("""
photo photograph picture image painting drawing sketch render rendering illustration portrait
closeup close-up shot view kind type sort piece pair group
""".split())

COLOURS = set("""
red green blue yellow orange purple violet pink brown black white gray grey golden gold silver
beige cyan magenta turquoise teal navy maroon crimson scarlet dark light bright pale colorful
colourful multicolored multicoloured rainbow transparent
""".split())

MATERIALS = set("""
wood wooden metal metallic steel iron glass plastic stone marble brick paper leather fur furry
woolen wool cotton silk denim velvet concrete ceramic porcelain clay rubber crystal ice icy
""".split())

DESCRIPTORS = set("""
big small large little huge tiny tall short long wide narrow old young new modern ancient
vintage beautiful pretty cute ugly shiny glossy matte rusty dirty clean wet dry fresh ripe
striped spotted dotted checkered plaid fluffy hairy smooth rough soft hard sunny rainy snowy
foggy cloudy stormy misty frozen burning happy sad angry realistic photorealistic detailed
""".split())

# Heads that name a scene attribute or a style rather than an object: edit the whole image.
SCENE_WORDS = set("""
day daylight daytime night nighttime sunset sunrise dusk dawn twilight morning evening
afternoon noon midnight hour winter summer autumn fall season weather style styles artstyle
rain snowfall fog mist storm lighting light scene atmosphere mood
""".split())

ATTRIBUTES = COLOURS | MATERIALS | DESCRIPTORS

_CLAUSE = re.compile(r"[,;:.!?()\[\]{}\"]")
_WORD = re.compile(r"[a-z][a-z'\-]*|\d+")


def _is_participle(word: str) -> bool:
    return len(word) > 4 and (word.endswith("ing") or word.endswith("ed"))


def noun_phrase(prompt: str) -> Optional[str]:
    """The object the prompt is about ("a green airplane" -> "airplane"), or None.

    See the module docstring for the rules. None means: no object noun was found (empty
    prompt, only attributes, or a scene/style word such as "sunset").
    """
    if not isinstance(prompt, str):
        return None
    clause = _CLAUSE.split(prompt.lower(), maxsplit=1)[0]
    words = [w.strip("'-") for w in _WORD.findall(clause)]
    phrase, end = _subject(words)
    if phrase and phrase[-1] in FRAME_NOUNS and end < len(words) and words[end] == "of":
        inner, _ = _subject(words[end + 1:])  # "a photo of a red car" -> "car"
        if inner:
            phrase, words = inner, words[end + 1:]
    if not phrase:
        return None
    while len(phrase) > 1 and phrase[-1] in ATTRIBUTES and any(w not in ATTRIBUTES for w in phrase):
        phrase = phrase[:-1]  # a trailing predicate: "make the car red" -> "car"
    head = phrase[-1]
    # Rule 4: attributes are dropped unless they are the head (the last word).
    kept = [w for w in phrase[:-1] if w not in ATTRIBUTES and not _is_participle(w)] + [head]
    if head in SCENE_WORDS:
        return None
    if all(w in ATTRIBUTES for w in phrase) and not _had_determiner(words):
        return None  # "green", "green shiny": only attributes; but "a green orange" is a fruit
    return " ".join(kept)


def _subject(words: list[str]) -> tuple[list[str], int]:
    """Rules 2-3: the words of the first noun phrase, and the index where it stopped."""
    phrase: list[str] = []
    i = 0
    for i, word in enumerate(words):
        if word.endswith("'s"):  # possessive: "the cat's hat" -> subject is "cat"
            phrase.append(word[:-2])
            return phrase, i + 1
        if not word:
            continue
        if word in BOUNDARIES or (phrase and _is_participle(word)):
            if phrase:
                return phrase, i
            continue  # a leading verb or preposition ("make the car red"): skip it
        if word in DETERMINERS or word.isdigit():
            if phrase:
                return phrase, i  # "car the" is not a phrase; stop at the next determiner
            continue
        phrase.append(word)
    return phrase, len(words)


def _had_determiner(words: list[str]) -> bool:
    return bool(words) and words[0] in DETERMINERS
