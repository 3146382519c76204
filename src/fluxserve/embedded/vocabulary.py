"""The words of the embedded model's scene grammar, in one place.

Colours, shapes, sizes and positions (see ``shared/EMBEDDED_MODEL.md``), the place words of
edit instructions, and the word list the tokenizers are built from. This module imports
nothing: the server imports it at startup (prompt upsampling) without torch or PIL.

The order of every table matters: random scenes are drawn from it, the caption-parsing labels
index it and the tokenizers number their words by it. The shipped checkpoint was trained with
these tables exactly as they are.
"""

from __future__ import annotations

# name -> sRGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30),
    "green": (30, 170, 50), "cyan": (30, 200, 220), "blue": (30, 60, 220),
    "purple": (140, 40, 180), "pink": (245, 120, 190), "white": (250, 250, 250),
    "black": (15, 15, 15), "gray": (128, 128, 128), "brown": (130, 80, 40),
}  # fmt: skip
# other spellings a caption may use -> the colour name
SYNONYMS: dict[str, str] = {"grey": "gray"}
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")
# size word (None = unmarked, medium) -> diameter as a fraction of the image's shorter side
SIZES: dict[str | None, float] = {"small": 0.25, None: 0.35, "large": 0.5}
# position phrase -> (column, row) in a 3x3 grid of the image
POSITIONS: dict[str, tuple[int, int]] = {
    "in the center": (1, 1), "at the top": (1, 0), "at the bottom": (1, 2),
    "on the left": (0, 1), "on the right": (2, 1), "in the top left": (0, 0),
    "in the top right": (2, 0), "in the bottom left": (0, 2), "in the bottom right": (2, 2),
}  # fmt: skip
# the words after "move the <shape> to the ..." -> the position phrase they mean
EDIT_PLACES: dict[str, str] = {
    "center": "in the center", "top": "at the top", "bottom": "at the bottom",
    "left": "on the left", "right": "on the right", "top left": "in the top left",
    "top right": "in the top right", "bottom left": "in the bottom left",
    "bottom right": "in the bottom right",
}  # fmt: skip
FUNCTION_WORDS = ("a", "an", "the", "and", "of", "in", "on", "at", "to", "into", "with")
EDIT_VERBS = ("make", "change", "move", "turn", "remove", "add")


def _colour_words() -> list[str]:
    """Every colour name, each followed by its other spellings."""
    words = []
    for name in COLOURS:
        words.append(name)
        words += [other for other, same in SYNONYMS.items() if same == name]
    return words


# The tokenizers' whole-word pieces, in token-id order.
BASE_WORDS: list[str] = [
    *FUNCTION_WORDS,
    *_colour_words(),
    *SHAPES,
    *(size for size in SIZES if size is not None),
    *dict.fromkeys(word for place in EDIT_PLACES for word in place.split()),
    "background",
    *EDIT_VERBS,
]
