"""Fit any prompt to what the embedded model can draw: the model's prompt path.

The model knows one small grammar (:mod:`fluxserve.embedded.vocabulary`): a caption inside it
reaches the text encoders unchanged. A prompt outside it would give a blank page (the model
never saw an unknown word), so it is redrawn as a caption of the grammar: the words the model
knows are kept (colours, shapes, sizes, positions, a background), common words are mapped
onto them (``sunset`` -> an orange background, ``city`` -> gray squares, ``sun`` -> a yellow
circle) and whatever is still missing is chosen from the prompt's hash. Every prompt gives a
scene that depends on the prompt, and through the noise on the seed; :attr:`Fitted.note` says
in one sentence that the picture is an approximation.

The engine applies :func:`fit` to checkpoints whose ``fluxserve.json`` declares
``"prompt_grammar": "scenes"`` (see :func:`fluxserve.engines.prompts.fit_prompt`). This module
imports nothing heavy: no torch, no PIL.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from fluxserve.embedded.vocabulary import (
    BASE_WORDS,
    COLOURS,
    EDIT_VERBS,
    FUNCTION_WORDS,
    POSITIONS,
    SHAPES,
    SIZES,
    SYNONYMS,
)

KNOWN = frozenset(BASE_WORDS)
CONTENT_WORDS = KNOWN - set(FUNCTION_WORDS) - set(EDIT_VERBS)
"""What an edit instruction must name besides its verb: a colour, shape, size, place, background."""
MAX_OBJECTS = 2  # the grammar's captions name one or two objects
MAX_NAMED = 6  # outside words quoted in the note

# Words outside the grammar that name a colour -> the grammar's colour.
COLOUR_WORDS: dict[str, str] = {
    **SYNONYMS, "golden": "yellow", "gold": "yellow", "silver": "gray", "crimson": "red",
    "scarlet": "red", "navy": "blue", "azure": "blue", "teal": "cyan", "turquoise": "cyan",
    "aqua": "cyan", "violet": "purple", "lavender": "purple", "magenta": "pink", "rose": "pink",
    "emerald": "green", "lime": "green", "olive": "green", "beige": "brown", "tan": "brown",
    "ivory": "white", "dark": "black",
}  # fmt: skip
# Words that set a scene -> its background colour.
SETTINGS: dict[str, str] = {
    "sky": "blue", "sunset": "orange", "sunrise": "orange", "dusk": "purple", "dawn": "pink",
    "night": "black", "space": "black", "galaxy": "black", "ocean": "blue", "sea": "blue",
    "lake": "blue", "underwater": "blue", "beach": "yellow", "desert": "yellow", "sand": "yellow",
    "forest": "green", "jungle": "green", "meadow": "green", "grass": "green", "field": "green",
    "garden": "green", "park": "green", "snow": "white", "winter": "white", "fog": "gray",
    "rain": "gray", "storm": "gray", "autumn": "orange", "fire": "red", "lava": "red",
}  # fmt: skip
# Words that name a thing -> the shape that draws it, and its colour (None: any).
THINGS: dict[str, tuple[str, str | None]] = {
    "sun": ("circle", "yellow"), "moon": ("circle", "white"), "planet": ("circle", None),
    "ball": ("circle", None), "apple": ("circle", "red"), "face": ("circle", None),
    "head": ("circle", None), "eye": ("circle", None), "clock": ("circle", None),
    "coin": ("circle", "yellow"), "bubble": ("circle", "cyan"), "cookie": ("circle", "brown"),
    "pizza": ("circle", "orange"), "city": ("square", "gray"), "building": ("square", "gray"),
    "skyscraper": ("square", "gray"), "skyline": ("square", "black"), "house": ("square", "brown"),
    "castle": ("square", "gray"), "box": ("square", "brown"), "window": ("square", "cyan"),
    "door": ("square", None), "car": ("square", None), "truck": ("square", None),
    "robot": ("square", "gray"), "computer": ("square", "black"), "phone": ("square", "black"),
    "screen": ("square", "black"), "book": ("square", None), "mountain": ("triangle", "gray"),
    "hill": ("triangle", "green"), "pyramid": ("triangle", "yellow"), "tree": ("triangle", "green"),
    "tent": ("triangle", None), "roof": ("triangle", "red"), "rocket": ("triangle", "white"),
    "boat": ("triangle", None), "ship": ("triangle", None), "sail": ("triangle", "white"),
    "arrow": ("triangle", None), "sparkle": ("star", "yellow"), "starfish": ("star", "orange"),
    "flower": ("star", "pink"), "snowflake": ("star", "white"), "firework": ("star", None),
    "donut": ("ring", "pink"), "doughnut": ("ring", "pink"), "wheel": ("ring", "black"),
    "tire": ("ring", "black"), "bagel": ("ring", "brown"), "portal": ("ring", "purple"),
    "gem": ("diamond", None), "jewel": ("diamond", None), "crystal": ("diamond", "cyan"),
    "kite": ("diamond", None),
}  # fmt: skip
# Two objects of an approximation without positions go to places where they never overlap.
PAIRS = (
    ("on the left", "on the right"), ("in the top left", "in the bottom right"),
    ("in the top right", "in the bottom left"), ("at the top", "at the bottom"),
    ("in the bottom left", "in the bottom right"), ("in the top left", "in the top right"),
)  # fmt: skip
PLACES = sorted((tuple(p.split()) for p in POSITIONS), key=len, reverse=True)
NOTE = "The embedded demo model drew an approximation: it knows simple shapes, colours and positions"


@dataclass(frozen=True)
class Fitted:
    """What the text encoders get for a prompt, and the note when it is an approximation."""

    caption: str
    note: str | None = None
    """One sentence for the user (None: the prompt is inside the grammar)."""


@dataclass
class _Obj:
    shape: str
    colour: str | None
    size: str | None
    position: str | None = None


def words_of(prompt: str) -> list[str]:
    """The prompt's words, lower case, punctuation dropped (as the tokenizers read it)."""
    return re.findall(r"[^\W_]+", prompt.lower())


def _singular(word: str) -> str:
    """``word`` without a plural ending when that makes it a word the tables know."""
    for cut in ("es", "s"):
        stem = word[: -len(cut)]
        if word.endswith(cut) and (stem in THINGS or stem in SHAPES or stem in SETTINGS):
            return stem
    return word


def _inside(words: list[str], editing: bool) -> bool:
    """Whether the grammar reads the prompt as it is: only its words, and (for a caption) a
    colour and a shape to draw."""
    if not all(w in KNOWN for w in words):
        return False
    return editing or (any(w in SHAPES for w in words) and any(w in COLOURS or w in SYNONYMS for w in words))


def _parse(words: list[str]) -> tuple[list[_Obj], str | None, str | None, str | None]:
    """Objects (in order), the background named (``on a <colour> background``), the background
    a setting word implies, and a colour left over, from the words the tables know."""
    objs: list[_Obj] = []
    named_bg = setting_bg = None
    colour = size = None
    for i, raw in enumerate(words):
        word = _singular(raw)
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in COLOURS or word in COLOUR_WORDS:
            c = COLOUR_WORDS.get(word, word)
            if nxt == "background":
                named_bg = c
            else:
                colour = c
        elif word in SIZES and word is not None:
            size = word
        elif word in SETTINGS:  # the first scene word sets the background
            setting_bg, colour = setting_bg or colour or SETTINGS[word], None
        elif word in SHAPES or word in THINGS:
            shape, own = (word, None) if word in SHAPES else THINGS[word]
            objs.append(_Obj(shape, colour or own, size))
            colour = size = None
        else:
            for place in PLACES:
                if tuple(words[i : i + len(place)]) == place:
                    target = next((o for o in reversed(objs) if o.position is None), None)
                    if target is not None:
                        target.position = " ".join(place)
                    break
    return objs[:MAX_OBJECTS], named_bg, setting_bg, colour


def _scene(words: list[str], rng: random.Random) -> tuple[list[_Obj], str]:
    """A scene of the grammar for ``words``: what they say, the rest from ``rng``."""
    objs, named_bg, setting_bg, leftover = _parse(words)
    if not objs:
        objs = [_Obj(rng.choice(SHAPES), leftover, None)]
        leftover = None
    background = named_bg or setting_bg or leftover
    if background is None:
        used = {o.colour for o in objs}
        background = rng.choice([c for c in COLOURS if c not in used])
    for o in objs:
        if o.colour == background:
            if named_bg is None and setting_bg is None:
                background = rng.choice([c for c in COLOURS if c != o.colour])
            else:
                o.colour = None
    for o in objs:
        if o.colour is None:
            taken = {background, *(x.colour for x in objs)}
            o.colour = rng.choice([c for c in COLOURS if c not in taken])
    if len(objs) == 1:
        o = objs[0]
        o.size = o.size or rng.choice([None, "small", "large"])
        if o.position is None:
            o.position = rng.choice([*POSITIONS, None])
    elif all(o.position is None for o in objs):
        for o, place in zip(objs, rng.choice(PAIRS), strict=True):
            o.position = place
            o.size = "small" if o.size == "large" else o.size
    return objs, background


def _caption(objs: list[_Obj], background: str) -> str:
    phrases = []
    for o in objs:
        words = [w for w in (o.size, o.colour, o.shape) if w]
        article = "an" if words[0][0] in "aeiou" else "a"
        phrases.append(" ".join([article, *words, *([o.position] if o.position else [])]))
    article = "an" if background[0] in "aeiou" else "a"
    return f"{' and '.join(phrases)} on {article} {background} background"


def _outside(words: list[str]) -> str:
    names = list(dict.fromkeys(w for w in words if w not in KNOWN))
    return " ".join(names[:MAX_NAMED]) + (" ..." if len(names) > MAX_NAMED else "")


def fit(prompt: str, editing: bool = False) -> Fitted:
    """The caption the embedded model draws for ``prompt`` (an edit instruction when
    ``editing``), and the note when that is an approximation. Deterministic: the same prompt
    always gives the same caption (the seed still varies the picture)."""
    words = words_of(prompt)
    if not prompt.strip() or (words and _inside(words, editing)):
        return Fitted(prompt)  # the empty prompt (guidance's unconditional side) or the grammar's
    if editing:  # an input image is there to keep: only the instruction's own words stay
        kept = " ".join(w for w in words if w in KNOWN)
        unknown = _outside(words)
        said = f"'{unknown}' is outside what it can draw" if unknown else "the instruction names no change"
        if not (set(kept.split()) & set(EDIT_VERBS) and set(kept.split()) & CONTENT_WORDS):
            return Fitted(prompt, f"{NOTE}; {said}.")
        return Fitted(kept, f"{NOTE}; {said}, so it followed '{kept}'.")
    digest = hashlib.sha256((" ".join(words) or prompt.strip()).encode()).digest()
    caption = _caption(*_scene(words, random.Random(int.from_bytes(digest[:8], "big"))))
    outside = _outside(words)
    if outside:
        why = f"'{outside}' is outside what it can draw, so it drew '{caption}'"
    else:
        why = f"the prompt names no colour and shape to draw, so it drew '{caption}'"
    return Fitted(caption, f"{NOTE}; {why}.")
