"""Prompt upsampling: rewrite a prompt with concrete detail before generation.

Two upsamplers behind one interface: the built-in one (offline, deterministic, keyword-driven;
for the embedded model it adds detail within the scene grammar) and one that asks any
OpenAI-compatible chat-completions endpoint, with a timeout and a fallback to the built-in one.
Both are deterministic given the prompt and seed, so seeds still reproduce.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from typing import Protocol

import httpx

from fluxserve.embedded.vocabulary import COLOURS, POSITIONS, SHAPES

log = logging.getLogger("fluxserve.upsampling")

SUBJECTS: dict[str, tuple[str, ...]] = {
    "portrait": (
        "portrait",
        "person",
        "man",
        "woman",
        "face",
        "people",
        "girl",
        "boy",
        "child",
        "astronaut",
        "king",
        "queen",
        "warrior",
        "chef",
        "musician",
    ),
    "landscape": (
        "landscape",
        "mountain",
        "mountains",
        "lake",
        "forest",
        "sea",
        "ocean",
        "beach",
        "valley",
        "river",
        "desert",
        "sky",
        "sunset",
        "sunrise",
        "field",
    ),
    "city": (
        "city",
        "street",
        "building",
        "buildings",
        "skyline",
        "town",
        "castle",
        "house",
        "interior",
        "room",
        "bridge",
        "cathedral",
        "village",
    ),
    "animal": (
        "cat",
        "dog",
        "bird",
        "horse",
        "fox",
        "lion",
        "tiger",
        "owl",
        "wolf",
        "animal",
        "dragon",
        "fish",
        "bear",
        "rabbit",
        "otter",
    ),
    "food": (
        "food",
        "cake",
        "pizza",
        "coffee",
        "fruit",
        "dish",
        "bread",
        "soup",
        "burger",
        "tea",
        "salad",
        "dessert",
    ),
    "product": (
        "bottle",
        "watch",
        "shoe",
        "shoes",
        "phone",
        "product",
        "car",
        "perfume",
        "chair",
        "lamp",
        "camera",
        "headphones",
    ),
}
DETAILS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # (composition, lighting, style)
    "portrait": (
        ("head-and-shoulders framing", "three-quarter view", "centered close-up"),
        ("soft window light", "golden hour backlight", "studio softbox lighting"),
        ("85mm lens, shallow depth of field", "natural skin texture, sharp eyes", "editorial photography"),
    ),
    "landscape": (
        (
            "wide-angle composition with a strong foreground",
            "rule-of-thirds horizon",
            "sweeping panoramic view",
        ),
        ("golden hour light", "soft morning mist", "dramatic clouds at dusk"),
        ("atmospheric depth, highly detailed", "crisp landscape photography", "rich natural colors"),
    ),
    "city": (
        (
            "leading lines down the street",
            "symmetrical architectural framing",
            "elevated view over the rooftops",
        ),
        ("blue hour light with glowing windows", "warm afternoon sun", "neon reflections"),
        ("architectural photography, sharp detail", "cinematic color grading", "tilt-shift clarity"),
    ),
    "animal": (
        ("eye-level close-up", "subject centered against a clean background", "full-body side view"),
        ("soft diffused daylight", "warm rim light", "dappled forest light"),
        ("wildlife photography, fine fur detail", "telephoto lens, creamy bokeh", "natural colors"),
    ),
    "food": (
        ("overhead flat lay", "45-degree angle close-up", "tight crop on the dish"),
        ("soft natural side light", "warm restaurant lighting", "bright airy light"),
        ("food photography, appetizing textures", "shallow depth of field", "rustic styling"),
    ),
    "product": (
        (
            "centered hero shot",
            "three-quarter angle on a seamless backdrop",
            "minimal composition with negative space",
        ),
        ("softbox studio lighting", "rim lighting with gentle reflections", "bright even light"),
        ("commercial product photography", "crisp detail, clean edges", "premium minimal style"),
    ),
    "general": (
        ("balanced composition", "clear focal point", "rule-of-thirds framing"),
        ("soft natural light", "dramatic lighting", "warm ambient light"),
        ("highly detailed", "vivid colors, sharp focus", "cinematic atmosphere"),
    ),
}


def _free_order(phrase: str) -> tuple[int, bool, int, int]:
    """Centre first, then left, right, top and bottom, then the corners row by row."""
    col, row = POSITIONS[phrase]
    return abs(col - 1) + abs(row - 1), col == 1, row, col


# Free positions are shuffled from this order. It predates the shared vocabulary and is kept so
# that a prompt and seed upsample as they always have.
SCENE_POSITIONS = tuple(sorted(POSITIONS, key=_free_order))
MOOD_BACKGROUNDS = {
    "night": "black",
    "space": "black",
    "dark": "black",
    "sky": "blue",
    "ocean": "blue",
    "sea": "blue",
    "water": "blue",
    "forest": "green",
    "grass": "green",
    "sunset": "orange",
    "fire": "red",
    "snow": "white",
    "desert": "yellow",
    "sand": "yellow",
    "earth": "brown",
    "wood": "brown",
}


class PromptUpsampler(Protocol):
    """Rewrites a prompt with more detail."""

    async def upsample(self, prompt: str, seed: int, scene_vocabulary: bool = False) -> str:
        """The rewritten prompt (deterministic for a given prompt and seed)."""


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class BuiltinUpsampler:
    """Offline: adds composition, lighting and style suited to the prompt's subject."""

    async def upsample(self, prompt: str, seed: int, scene_vocabulary: bool = False) -> str:
        """The rewritten prompt (deterministic for a given prompt and seed)."""
        return self.rewrite(prompt, seed, scene_vocabulary)

    def rewrite(self, prompt: str, seed: int, scene_vocabulary: bool = False) -> str:
        """The rewritten prompt, synchronously."""
        rng = _rng(prompt, seed)
        if scene_vocabulary:
            return _scene_detail(prompt, rng)
        words = set(re.findall(r"[a-z]+", prompt.lower()))
        subject = next((k for k, keys in SUBJECTS.items() if words & set(keys)), "general")
        composition, lighting, style = (rng.choice(opts) for opts in DETAILS[subject])
        # Never contradict a time of day the user chose.
        if words & {"night", "midnight", "evening", "dark", "nighttime"}:
            lighting = rng.choice(("moody night lighting", "glowing lights against the dark"))
        elif words & {"sunset", "sunrise", "dawn", "dusk"}:
            lighting = rng.choice(("warm low sun", "long soft shadows"))
        base = prompt.strip().rstrip(".,;")
        return f"{base}, {composition}, {lighting}, {style}"


OBJECT = re.compile(
    r"\b(?:(small|large)\s+)?("
    + "|".join(COLOURS)
    + r")\s+("
    + "|".join(SHAPES)
    + r")\b(\s+(?:"
    + "|".join(SCENE_POSITIONS)
    + r"))?"
)


def _scene_detail(prompt: str, rng: random.Random) -> str:
    """Detail the embedded model understands: sizes, positions and a background colour."""
    text = prompt.strip().rstrip(".").lower()
    objects = list(OBJECT.finditer(text))
    used_colours = {m.group(2) for m in objects}
    if objects:
        free: list[str] = [
            p for p in SCENE_POSITIONS if not any(m.group(4) and m.group(4).strip() == p for m in objects)
        ]
        if len(objects) == 2:
            free = [p for p in ("on the left", "on the right", "at the top", "at the bottom") if p in free]
        rng.shuffle(free)
        pieces, last = [], 0
        for m in objects:
            pieces.append(text[last : m.start()])
            size = m.group(1) or ("" if len(objects) == 2 else rng.choice(("", "large")))
            position = (m.group(4) or "").strip() or (free.pop() if free else "")
            obj_words = [w for w in (size, m.group(2), m.group(3), position) if w]
            pieces.append(" ".join(obj_words))
            last = m.end()
        pieces.append(text[last:])
        text = "".join(pieces)
    if "background" not in text:
        words = set(re.findall(r"[a-z]+", text))
        mood = next((c for w, c in MOOD_BACKGROUNDS.items() if w in words), None)
        options = [c for c in COLOURS if c not in used_colours]
        colour = mood if mood and mood not in used_colours else rng.choice(options)
        article = "an" if colour[0] in "aeiou" else "a"
        text += f" on {article} {colour} background"
    return text


SYSTEM_PROMPT = (
    "You rewrite prompts for a text-to-image model. Keep the user's subject and every detail "
    "they gave; add concrete composition, lighting and style. Answer with the rewritten "
    "prompt only, one paragraph, under 80 words."
)


class ChatUpsampler:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, falling back to the built-in
    upsampler on timeout or error. Results are cached per (prompt, seed) so that a seed
    reproduces even if the endpoint is not deterministic."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        fallback: BuiltinUpsampler | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.fallback = fallback or BuiltinUpsampler()
        self._cache: dict[tuple[str, int, bool], str] = {}

    async def upsample(self, prompt: str, seed: int, scene_vocabulary: bool = False) -> str:
        """The model's rewrite; on any failure or timeout, the built-in one (never an error)."""
        key = (prompt, seed, scene_vocabulary)
        if key in self._cache:
            return self._cache[key]
        system = SYSTEM_PROMPT
        if scene_vocabulary:
            system += (
                " The model only knows flat scenes: colours, the shapes "
                f"{', '.join(SHAPES[:-1])} and {SHAPES[-1]}, the sizes small and large, positions "
                "such as 'on the left' or 'in the top right', and 'on a <colour> "
                "background'. Use only those words."
            )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "temperature": 0,
            "seed": seed,
            "max_tokens": 300,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        }
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                r = await client.post(self.url, json=body, headers=headers)
                r.raise_for_status()
                text = str(r.json()["choices"][0]["message"]["content"]).strip().strip('"')
            if not text or len(text) > 2000:
                raise ValueError("empty or oversized rewrite")
        except Exception as exc:
            log.warning(
                "prompt upsampling via %s failed (%s); using the built-in upsampler",
                self.url,
                exc.__class__.__name__,
            )
            return await self.fallback.upsample(prompt, seed, scene_vocabulary)
        self._cache[key] = text
        return text
