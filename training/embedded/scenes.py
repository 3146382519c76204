"""The scene grammar of the embedded model: scenes, rendering, captions and edit instructions.

See ``shared/EMBEDDED_MODEL.md``: one or two non-overlapping objects (colour, shape, size,
position: the words in :mod:`fluxserve.embedded.vocabulary`) on a background; edits recolour,
move, resize, reshape, remove or add an object, or change the background.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from fluxserve.embedded.vocabulary import COLOURS, EDIT_PLACES, POSITIONS, SHAPES, SIZES

# (shape, colour, background) combinations never shown in training (composition test).
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("circle", "purple", "yellow"), ("square", "orange", "blue"), ("triangle", "cyan", "black"),
    ("star", "green", "pink"), ("ring", "red", "gray"), ("diamond", "yellow", "purple"),
    ("circle", "brown", "cyan"), ("star", "white", "brown"),
})  # fmt: skip
MARGIN = 0.06


@dataclass(frozen=True)
class Obj:
    """One object of a scene: what the caption says about it, and where it is drawn."""

    shape: str
    colour: str
    size: str | None = None  # "small", None (medium), "large"
    position: str | None = None  # a POSITIONS key, or None = anywhere
    cx: float = 0.5  # centre, as fractions of width and height
    cy: float = 0.5

    def diameter(self, w: int, h: int) -> float:
        """The object's diameter in pixels in a w x h image."""
        return SIZES[self.size] * min(w, h)


@dataclass(frozen=True)
class Scene:
    """A background colour and its objects (laid out once their centres are set)."""

    objects: tuple[Obj, ...]
    background: str = "white"
    background_said: bool = False  # whether a white background is named in the caption


def place(position: str, size: str | None, w: int, h: int) -> tuple[float, float]:
    """Centre (fractions) of an object of ``size`` at ``position`` in a w x h image."""
    d = SIZES[size] * min(w, h)
    col, row = POSITIONS[position]
    xs = [(d / 2 + MARGIN * w) / w, 0.5, 1 - (d / 2 + MARGIN * w) / w]
    ys = [(d / 2 + MARGIN * h) / h, 0.5, 1 - (d / 2 + MARGIN * h) / h]
    return xs[col], ys[row]


def cell_of(cx: float, cy: float) -> tuple[int, int]:
    """The (column, row) of the 3x3 grid that a centre (fractions) falls in."""
    return min(2, int(cx * 3)), min(2, int(cy * 3))


def _fits(objs: list[Obj], w: int, h: int) -> bool:
    for o in objs:
        r = o.diameter(w, h) / 2
        if not (r <= o.cx * w <= w - r and r <= o.cy * h <= h - r):
            return False
        if o.position is not None and cell_of(o.cx, o.cy) != POSITIONS[o.position]:
            return False
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            dist = math.hypot((a.cx - b.cx) * w, (a.cy - b.cy) * h)
            if dist < (a.diameter(w, h) + b.diameter(w, h)) / 2 * 1.05 + 0.03 * min(w, h):
                return False
    return True


def layout(scene: Scene, w: int, h: int, rng: random.Random, tries: int = 50) -> Scene | None:
    """Give every object a centre: its position word's, or a free random spot. None if the
    objects cannot all fit without overlapping."""
    for _ in range(tries):
        objs: list[Obj] = []
        for o in scene.objects:
            if o.position is not None:
                cx, cy = place(o.position, o.size, w, h)
            else:
                r = o.diameter(w, h) / 2
                cx = rng.uniform(r + 1, w - r - 1) / w
                cy = rng.uniform(r + 1, h - r - 1) / h
            objs.append(replace(o, cx=cx, cy=cy))
        if _fits(objs, w, h):
            return replace(scene, objects=tuple(objs))
        if all(o.position is not None for o in scene.objects):
            return None
    return None


def _polygon(shape: str, cx: float, cy: float, d: float) -> list[tuple[float, float]]:
    r = d / 2
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.382
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.05))
        return pts
    raise ValueError(shape)


def render(scene: Scene, w: int, h: int, supersample: int = 4) -> Image.Image:
    """Draw a laid-out scene at w x h (anti-aliased by supersampling)."""
    s = supersample
    img = Image.new("RGB", (w * s, h * s), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        d = o.diameter(w, h) * s
        cx, cy = o.cx * w * s, o.cy * h * s
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
        elif o.shape == "ring":
            draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
            draw.ellipse([cx - d / 4, cy - d / 4, cx + d / 4, cy + d / 4],
                         fill=COLOURS[scene.background])  # fmt: skip
        elif o.shape == "square":
            draw.rectangle([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, d), fill=fill)
    return img.resize((w, h), Image.Resampling.BOX) if s > 1 else img


def _article(word: str, rng: random.Random | None) -> str:
    if rng is not None and rng.random() < 0.3:
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def describe(o: Obj, rng: random.Random | None = None) -> str:
    """The caption phrase of one object (``rng`` varies the article, as people do)."""
    words = ([o.size] if o.size else []) + [o.colour, o.shape]
    text = f"{_article(words[0], rng)} {' '.join(words)}"
    return f"{text} {o.position}" if o.position else text


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The caption of a scene; a white background is named only if ``background_said``."""
    text = " and ".join(describe(o, rng) for o in scene.objects)
    if scene.background != "white" or scene.background_said:
        text += f" on {_article(scene.background, rng)} {scene.background} background"
    return text


def allowed(shape: str, colour: str, background: str, train: bool) -> bool:
    """Whether a combination may appear: in training, none of :data:`HELD_OUT`."""
    held = (shape, colour, background) in HELD_OUT
    return not held if train else True


def random_object(rng: random.Random, background: str, positioned: float = 0.7) -> Obj:
    """A random object not coloured like ``background``, with a position word at the odds
    ``positioned`` (not yet laid out)."""
    colour = rng.choice([c for c in COLOURS if c != background])
    return Obj(
        shape=rng.choice(SHAPES),
        colour=colour,
        size=rng.choice(list(SIZES)),
        position=rng.choice(list(POSITIONS)) if rng.random() < positioned else None,
    )


def random_scene(rng: random.Random, w: int, h: int, n_objects: int, train: bool = True) -> Scene:
    """A random laid-out scene (training scenes avoid the held-out combinations)."""
    while True:
        background = "white" if rng.random() < 0.3 else rng.choice(list(COLOURS))
        objs = tuple(random_object(rng, background) for _ in range(n_objects))
        if train and any(not allowed(o.shape, o.colour, background, True) for o in objs):
            continue
        scene = Scene(objs, background, background_said=rng.random() < 0.5)
        laid = layout(scene, w, h, rng)
        if laid is not None:
            return laid


def random_edit(
    rng: random.Random, source: Scene, w: int, h: int, train: bool = True
) -> tuple[str, Scene] | None:
    """An edit instruction for ``source`` and the scene it should produce (None if the drawn
    edit cannot apply, e.g. it would overlap)."""
    objs = list(source.objects)
    shapes = [o.shape for o in objs]
    kind = rng.choice(["recolour", "background", "move", "resize", "reshape", "remove", "add"])
    i = rng.randrange(len(objs))
    o = objs[i]
    if kind != "add" and shapes.count(o.shape) > 1:
        return None  # "the <shape>" would be ambiguous
    bg = source.background
    if kind == "recolour":
        c = rng.choice([c for c in COLOURS if c not in (bg, o.colour)])
        objs[i] = replace(o, colour=c)
        text = f"make the {o.shape} {c}"
    elif kind == "background":
        used = {x.colour for x in objs}
        c = rng.choice([c for c in COLOURS if c not in used and c != bg])
        bg = c
        verb = rng.choice(["change the background to", "make the background"])
        text = f"{verb} {c}"
    elif kind == "move":
        place_word = rng.choice(list(EDIT_PLACES))
        pos = EDIT_PLACES[place_word]
        cx, cy = place(pos, o.size, w, h)
        objs[i] = replace(o, position=pos, cx=cx, cy=cy)
        text = f"move the {o.shape} to the {place_word}"
    elif kind == "resize":
        size = rng.choice(["small", "large"])
        if o.size == size:
            return None
        objs[i] = replace(o, size=size)
        text = f"make the {o.shape} {size}"
    elif kind == "reshape":
        new = rng.choice([s for s in SHAPES if s not in shapes])
        objs[i] = replace(o, shape=new)
        text = f"turn the {o.shape} into a {new}"
    elif kind == "remove":
        if len(objs) == 1:
            return None
        objs.pop(i)
        text = f"remove the {o.shape}"
    else:
        if len(objs) >= 2:
            return None
        new_obj = random_object(rng, bg, positioned=0.8)
        if new_obj.shape in shapes:
            return None
        objs.append(new_obj)
        text = "add " + describe(new_obj, rng)
        target = layout(replace(source, objects=tuple(objs)), w, h, rng)
        if target is None:
            return None
        # the objects that were there do not move
        fixed = tuple(source.objects) + (target.objects[-1],)
        target = replace(target, objects=fixed)
        if not _fits(list(fixed), w, h):
            return None
        objs = list(fixed)
    target = replace(source, objects=tuple(objs), background=bg)
    if train and any(not allowed(x.shape, x.colour, bg, True) for x in objs):
        return None
    if not _fits(list(target.objects), w, h):
        return None
    return text, target
