"""The embedded model's training data: sizes, images as tensors, captions and the data pool.

The pool holds scenes, captions and edit triples rendered at every training size and encoded
to latents once. Caption-parsing labels (what each word of a caption says about which object)
train the text encoder.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fluxserve.embedded.vocabulary import COLOURS, POSITIONS, SHAPES, SIZES, SYNONYMS
from fluxserve.spec.geometry import fit_area
from training.embedded.config import Config
from training.embedded.progress import Progress
from training.embedded.scenes import Scene, caption, random_edit, random_scene, render

RATIOS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (1, 2), (7, 3), (3, 7))
FILLERS = (
    "a photo of",
    "an image of",
    "beautiful",
    "highly detailed",
    "please draw",
    "minimalist",
    "a picture showing",
    "4k render of",
    "simple flat art,",
)


def buckets(cfg: Config) -> list[tuple[int, int]]:
    """Training sizes: the native sizes the engine will sample at (the same rule)."""
    return [fit_area(a, b, cfg.native_area, cfg.multiple) for a, b in RATIOS]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a (3, h, w) float tensor in [-1, 1]."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return a / 127.5 - 1.0


def object_mask(img: Image.Image, background: str) -> np.ndarray:
    """1.0 where a pixel is clearly not the ``background`` colour (an object), else 0.0."""
    a = np.asarray(img, dtype=np.int16)
    bg = np.array(COLOURS[background], dtype=np.int16)
    return (np.abs(a - bg).sum(-1) > 60).astype(np.float32)


def noisy_caption(text: str, rng: random.Random) -> str:
    """``text``, sometimes with a filler in front or changed case (words outside the grammar
    must not matter)."""
    r = rng.random()
    if r < 0.1:
        text = f"{rng.choice(FILLERS)} {text}"
    elif r < 0.15:
        text = text.upper() if rng.random() < 0.5 else text.capitalize() + "."
    return text


# Words outside the grammar, for captions that must not go blank (``wild_caption``).
WILD_WORDS = (
    "photo", "city", "night", "cat", "dog", "house", "car", "tree", "sky", "sun", "art",
    "man", "old", "cute", "sofa", "door", "ocean", "sunset", "oil", "paint", "street", "light",
    "dark", "ball", "flower", "bird", "fish", "book", "cup", "hill", "river", "road", "window",
    "table", "chair", "toy", "logo", "icon", "moon", "boat", "robot", "future", "cozy", "neon",
)  # fmt: skip


def wild_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of ``scene`` with words outside the grammar, drawn three ways (a prompt such as
    "a futuristic city at night" must still give a valid scene, never a blank page):

    - one or two unknown words inserted into the caption (the scene is the caption's);
    - an object's shape word replaced by an unknown noun ("a red car"): the shape was drawn
      independently of the other words, so the scene is still a fair sample for the rest;
    - unknown words only: nothing is said, and any scene is right (as with an empty caption,
      but the model learns that unknown words leave it a scene rather than a white page).
    """
    r = rng.random()
    if r < 0.2:
        return " ".join(rng.choice(WILD_WORDS) for _ in range(rng.randint(1, 4)))
    words = caption(scene, rng).split()
    if r < 0.6:
        shapes = [i for i, word in enumerate(words) if word in SHAPES]
        words[rng.choice(shapes)] = rng.choice(WILD_WORDS)
    else:
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(WILD_WORDS))
    return " ".join(words)


@torch.no_grad()
def encode(vae: Any, imgs: list[Image.Image], device: torch.device) -> torch.Tensor:
    """The autoencoder's latents (distribution modes) of same-size images, on the CPU."""
    x = torch.stack([to_tensor(i) for i in imgs]).to(device)
    return vae.encode(x).latent_dist.mode().float().cpu()


def build_pool(cfg: Config, vae: Any, work: Path, device: torch.device) -> dict[str, Any]:
    """Stage 2: the data pool, rendered, encoded and saved to ``work/pool.pt`` once.

    ``pool["t2i"][(w, h)]`` holds captions, latents and object masks per training size;
    ``pool["edit"][(w, h)]`` instructions, source and target latents and masks of what changed;
    ``pool["shift"]``/``pool["scale"]`` normalise the latents.
    """
    path = work / "pool.pt"
    if path.exists():
        return torch.load(path)  # type: ignore[no-any-return]
    rng = random.Random(cfg.seed * 1000 + 2)
    sizes = buckets(cfg)
    pool: dict[str, Any] = {"t2i": {}, "edit": {}}
    total = cfg.pool_t2i + cfg.pool_edit
    prog = Progress("data", total)
    done = 0
    per_bucket_t2i = cfg.pool_t2i // len(sizes)
    per_bucket_edit = cfg.pool_edit // len(sizes)
    chunk = 256
    for w, h in sizes:
        caps, lats, masks = [], [], []
        for i0 in range(0, per_bucket_t2i, chunk):
            imgs = []
            for _ in range(min(chunk, per_bucket_t2i - i0)):
                scene = random_scene(rng, w, h, 1 if rng.random() < 0.45 else 2)
                img = render(scene, w, h)
                imgs.append(img)
                caps.append(noisy_caption(caption(scene, rng), rng))
                masks.append(object_mask(img, scene.background))
            lats.append(encode(vae, imgs, device).half())
            done += len(imgs)
            prog.update(done)
        pool["t2i"][(w, h)] = {
            "captions": caps,
            "latents": torch.cat(lats),
            "masks": torch.from_numpy(np.stack(masks)).half(),
        }
        caps, src_l, tgt_l, masks = [], [], [], []
        n = 0
        while n < per_bucket_edit:
            srcs: list[Image.Image] = []
            tgts: list[Image.Image] = []
            while len(srcs) < min(chunk, per_bucket_edit - n):
                src = random_scene(rng, w, h, rng.choice((1, 2)))
                edit = random_edit(rng, src, w, h)
                if edit is None:
                    continue
                text, tgt = edit
                srcs.append(render(src, w, h))
                timg = render(tgt, w, h)
                tgts.append(timg)
                caps.append(noisy_caption(text, rng))
                # weight both what changed and the objects of the result
                diff = (
                    np.abs(np.asarray(srcs[-1], np.int16) - np.asarray(timg, np.int16)).sum(-1) > 60
                ).astype(np.float32)
                masks.append(np.maximum(diff, object_mask(timg, tgt.background)))
            src_l.append(encode(vae, srcs, device).half())
            tgt_l.append(encode(vae, tgts, device).half())
            n += len(srcs)
            done += len(srcs)
            prog.update(done)
        pool["edit"][(w, h)] = {
            "captions": caps,
            "source": torch.cat(src_l),
            "latents": torch.cat(tgt_l),
            "masks": torch.from_numpy(np.stack(masks)).half(),
        }
    all_lat = torch.cat([b["latents"][:2000].float().flatten() for b in pool["t2i"].values()])
    pool["shift"] = float(all_lat.mean())
    pool["scale"] = float(1.0 / all_lat.std())
    torch.save(pool, path)
    return pool


# A real FLUX gets a T5 that already knows language. Ours starts from nothing, and learning
# which colour word belongs to which noun only through the image loss is slow (a model trained
# that way drew "a red circle on a blue background" and "a blue circle on a red background"
# alike). So the text encoder first learns to parse captions: every word of an object's phrase
# predicts that object's colour, shape, size and position, and the words of "on a <colour>
# background" predict the background colour. The heads are dropped at export.

COLOUR_LIST = list(COLOURS)
POSITION_LIST = [*POSITIONS, "anywhere"]
SIZE_LIST = [size or "medium" for size in SIZES]  # None (unmarked) is "medium"
HEADS = {
    "role": 4,
    "colour": len(COLOUR_LIST),
    "shape": len(SHAPES),
    "size": len(SIZE_LIST),
    "position": len(POSITION_LIST),
}
IGNORE = -100


def caption_labels(pieces: list[str]) -> list[list[int]]:
    """Per token [role, colour, shape, size, position] for a tokenised caption (roles: 0 other
    word, 1 first object, 2 second object, 3 background; ``IGNORE`` where nothing applies)."""
    labels = [[IGNORE] * 5 for _ in pieces]
    words: list[tuple[int, str]] = []
    for i, p in enumerate(pieces):
        if p in ("</s>", "<pad>"):
            continue
        labels[i][0] = 0
        if p.startswith("\u2581") and len(p) > 1:
            words.append((i, SYNONYMS.get(p[1:], p[1:])))
    seq = [w for _, w in words]
    end = len(seq)
    if "background" in seq:
        b = len(seq) - 1 - seq[::-1].index("background")
        if b > 0 and seq[b - 1] in COLOURS:
            start = b - 1
            start -= start > 0 and seq[start - 1] in ("a", "an")
            start -= start > 0 and seq[start - 1] == "on"
            for k in range(start, b + 1):
                labels[words[k][0]] = [3, COLOUR_LIST.index(seq[b - 1]), IGNORE, IGNORE, IGNORE]
            end = start
    bounds, s0 = [], 0
    for k in range(end + 1):
        if k == end or seq[k] == "and":
            bounds.append((s0, k))
            s0 = k + 1
    for n, (a, b) in enumerate(bounds[:2]):
        ws = seq[a:b]
        colours = [w for w in ws if w in COLOURS]
        shapes = [w for w in ws if w in SHAPES]
        if not colours or not shapes:
            continue
        after = ws[ws.index(shapes[0]) + 1 :]
        phrase = " ".join(after)
        size = "small" if "small" in ws else "large" if "large" in ws else "medium"
        lab = [
            n + 1,
            COLOUR_LIST.index(colours[0]),
            SHAPES.index(shapes[0]),
            SIZE_LIST.index(size),
            POSITION_LIST.index(phrase) if phrase in POSITIONS else POSITION_LIST.index("anywhere"),
        ]
        for k in range(a, b):
            labels[words[k][0]] = list(lab)
    return labels


def label_batch(
    tok2: Any, input_ids: torch.Tensor, cache: dict[tuple[int, ...], list[list[int]]]
) -> torch.Tensor:
    """:func:`caption_labels` of a batch of token ids, shape (batch, tokens, 5); ``cache``
    remembers captions seen before."""
    rows = []
    for ids in input_ids.tolist():
        key = tuple(ids)
        if key not in cache:
            cache[key] = caption_labels(tok2.convert_ids_to_tokens(ids))
        rows.append(cache[key])
    return torch.tensor(rows)
