"""Score images against scenes without a neural network, and write contact sheets.

Background = the dominant border colour; objects are found by colour (nearest palette colour),
their centroid gives the 3x3 cell, and their shape comes from area/bounding-box (extent),
area/convex-hull (solidity), the centroid's height in the box and whether the centre is a hole.

    python -m training.embedded.evaluate [--checkpoint DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fluxserve.embedded.vocabulary import COLOURS
from fluxserve.spec.geometry import fit_area
from training.embedded.scenes import (
    HELD_OUT,
    Obj,
    Scene,
    caption,
    cell_of,
    layout,
    random_edit,
    random_scene,
    render,
)

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
EVAL_RATIOS = ("1:1", "16:9", "9:16", "3:7", "7:3")


@dataclass
class Found:
    """One object found in an image: palette colour, shape, 3x3 cell and area in pixels."""

    colour: str
    shape: str
    cell: tuple[int, int]
    area: int


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of integer pixel corners (monotone chain)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return float(len(pts))

    def cross(o: Any, a: Any, b: Any) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[Any] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[Any] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    x = np.array([p[0] for p in hull], dtype=np.float64)
    y = np.array([p[1] for p in hull], dtype=np.float64)
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def shape_features(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(extent, solidity, centroid height in box, centre-is-hole) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    area = float(mask.sum())
    extent = area / ((y1 - y0) * (x1 - x0))
    corners = np.concatenate(
        [
            np.stack([xs, ys], 1),
            np.stack([xs + 1, ys], 1),
            np.stack([xs, ys + 1], 1),
            np.stack([xs + 1, ys + 1], 1),
        ]
    )
    solidity = area / max(1.0, _hull_area(corners))
    cy_rel = (ys.mean() + 0.5 - y0) / (y1 - y0)
    h, w = y1 - y0, x1 - x0
    cyi, cxi = y0 + h // 2, x0 + w // 2
    r = max(1, min(h, w) // 8)
    hole = 1.0 - float(mask[cyi - r : cyi + r + 1, cxi - r : cxi + r + 1].mean())
    return extent, solidity, float(cy_rel), hole


def classify_shape(mask: np.ndarray) -> str:
    """Which of the six shapes a boolean mask of one object is (by :func:`shape_features`)."""
    extent, solidity, cy_rel, hole = shape_features(mask)
    if hole > 0.6 and solidity < 0.9:
        return "ring"
    if solidity < 0.68:
        return "star"
    if extent > 0.88:
        return "square"
    if extent > 0.66:
        return "circle"
    return "triangle" if cy_rel > 0.58 else "diamond"


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask (small images: a plain flood fill)."""
    seen = np.zeros_like(mask)
    comps = []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        stack = [(y, x)]
        seen[y, x] = True
        comp = np.zeros_like(mask)
        while stack:
            cy, cx = stack.pop()
            comp[cy, cx] = True
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(comp)
    return comps


def analyse(img: Image.Image, max_side: int = 128) -> tuple[str, list[Found]]:
    """The background colour and the objects found in ``img``."""
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BOX)
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w, _ = a.shape
    dist = ((a[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    label = dist.argmin(-1)
    near = dist.min(-1) < 60.0**2  # far from every palette colour = blur/edge, ignored
    border = np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]])
    bg = int(np.bincount(border, minlength=len(PALETTE_NAMES)).argmax())
    found = []
    min_area = 0.006 * min(h, w) ** 2
    for ci, name in enumerate(PALETTE_NAMES):
        if ci == bg:
            continue
        mask = (label == ci) & near
        if mask.sum() < min_area:
            continue
        for comp in _components(mask):
            area = int(comp.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(comp)
            cell = cell_of((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
            found.append(Found(name, classify_shape(comp), cell, area))
    found.sort(key=lambda f: -f.area)
    return PALETTE_NAMES[bg], found


def score(scene: Scene, img: Image.Image, check_all_cells: bool = False) -> dict[str, bool]:
    """Which attributes of ``scene`` the image gets right. Objects with a position word are
    checked for their cell; with ``check_all_cells`` (edits) every object is."""
    bg, found = analyse(img)
    out = {
        "background": bg == scene.background,
        "colour": True,
        "shape": True,
        "position": True,
        "count": len(found) == len(scene.objects),
    }
    pool = list(found)
    # Match the most specific candidates first, so two objects of one colour pair up right.
    order = sorted(scene.objects, key=lambda o: sum(f.colour == o.colour for f in found))
    for o in order:
        want = cell_of(o.cx, o.cy)
        same = [f for f in pool if f.colour == o.colour]
        match = next((f for f in same if f.shape == o.shape and f.cell == want), None)
        match = match or next((f for f in same if f.shape == o.shape), None)
        match = match or (same[0] if same else None)
        if match is None:
            out["colour"] = out["shape"] = out["position"] = False
            continue
        pool.remove(match)
        out["shape"] &= match.shape == o.shape
        if o.position is not None or check_all_cells:
            out["position"] &= match.cell == cell_of(o.cx, o.cy)
    out["all"] = all(out.values())
    return out


def size_for(ratio: str, area: int = 64 * 64, multiple: int = 8) -> tuple[int, int]:
    """The size for ``"W:H"`` at ``area``: the engine's own rule (:func:`fit_area`)."""
    a, b = (int(x) for x in ratio.split(":"))
    return fit_area(a, b, area, multiple)


def prompt_set(seed: int = 1234, per_ratio: int = 24) -> list[dict[str, Any]]:
    """The fixed held-out evaluation set: single, two-object and edit cases per ratio, plus
    the held-out combinations. Scenes are drawn with a separate seed from training."""
    rng = random.Random(seed)
    cases: list[dict[str, Any]] = []
    for ratio in EVAL_RATIOS:
        w, h = size_for(ratio, 256 * 256, 16)
        for kind, n in (("single", 1), ("two", 2)):
            for _ in range(per_ratio):
                s = random_scene(rng, w, h, n, train=False)
                cases.append({"kind": kind, "ratio": ratio, "scene": s, "seed": rng.randrange(2**31)})
        k = 0
        while k < per_ratio:
            src = random_scene(rng, w, h, rng.choice((1, 2)), train=False)
            edit = random_edit(rng, src, w, h, train=False)
            if edit is None:
                continue
            cases.append(
                {
                    "kind": "edit",
                    "ratio": ratio,
                    "scene": edit[1],
                    "source": src,
                    "instruction": edit[0],
                    "seed": rng.randrange(2**31),
                }
            )
            k += 1
    for shape, colour, bg in sorted(HELD_OUT):
        for ratio in ("1:1", "16:9"):
            w, h = size_for(ratio, 256 * 256, 16)
            laid = layout(Scene((Obj(shape, colour, None, "in the center"),), bg), w, h, rng)
            assert laid is not None
            s = laid
            cases.append({"kind": "held_out", "ratio": ratio, "scene": s, "seed": rng.randrange(2**31)})
    return cases


def generate_case(pipe_run: Any, case: dict[str, Any]) -> Image.Image:
    """The image ``pipe_run`` makes for a case: from its caption, or its edit of the source."""
    w, h = size_for(case["ratio"], 256 * 256, 16)
    if case["kind"] == "edit":
        src = render(case["source"], w, h)
        return pipe_run(case["instruction"], w, h, case["seed"], src)  # type: ignore[no-any-return]
    return pipe_run(caption(case["scene"]), w, h, case["seed"], None)  # type: ignore[no-any-return]


def summarise(cases: list[dict[str, Any]], scores: list[dict[str, bool]]) -> dict[str, Any]:
    """The share of cases right, per kind (single, two, edit, held_out) and attribute."""
    out: dict[str, Any] = {}
    for kind in ("single", "two", "edit", "held_out"):
        rows = [s for c, s in zip(cases, scores, strict=True) if c["kind"] == kind]
        if not rows:
            continue
        out[kind] = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}
        out[kind]["n"] = len(rows)
    return out


def contact_sheet(
    cases: list[dict[str, Any]],
    images: list[Image.Image],
    scores: list[dict[str, bool]],
    path: Path,
    cols: int = 12,
) -> None:
    """Save the images as a grid of thumbnails, each with a green (all right) or red bar."""
    cell = 96
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 4)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i, (img, s) in enumerate(zip(images, scores, strict=True)):
        x, y = (i % cols) * cell, (i // cols) * (cell + 4)
        thumb = img.copy()
        thumb.thumbnail((cell - 4, cell - 4))
        sheet.paste(thumb, (x + 2, y + 2))
        draw.rectangle(
            [x, y + cell, x + cell - 1, y + cell + 3], fill=(40, 200, 40) if s["all"] else (220, 40, 40)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def checkpoint_runner(
    checkpoint: Path, steps: int | None = None, guidance: float | None = None
) -> tuple[Any, int, float]:
    """A ``run(prompt, w, h, seed, image)`` that generates with the fluxserve engine, and the
    steps and guidance it uses (default: what the checkpoint's ``fluxserve.json`` declares)."""
    from fluxserve.engines import EngineRequest
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    meta = json.loads((checkpoint / "fluxserve.json").read_text())
    n_steps = steps or int(meta.get("default_steps", 12))
    scale = guidance if guidance is not None else float(meta.get("default_guidance", 3.0))
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    engine.load(str(checkpoint))

    def run(prompt: str, w: int, h: int, seed: int, image: Image.Image | None) -> Image.Image:
        images = [image] if image is not None else []
        return engine.generate(
            EngineRequest(str(checkpoint), prompt, w, h, seed, n_steps, scale, images=images)
        )[0]

    return run, n_steps, scale


def evaluate_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    steps: int | None = None,
    guidance: float | None = None,
    per_ratio: int = 24,
) -> dict[str, Any]:
    """Generate the prompt set with the fluxserve engine and score it."""
    import torch

    run, steps, guidance = checkpoint_runner(checkpoint, steps, guidance)
    cases = prompt_set(per_ratio=per_ratio)
    images, scores, times, walls = [], [], [], []
    for case in cases:
        t, w = time.process_time(), time.perf_counter()
        img = generate_case(run, case)
        times.append(time.process_time() - t)
        walls.append(time.perf_counter() - w)
        images.append(img)
        scores.append(score(case["scene"], img, check_all_cells=case["kind"] == "edit"))
    figures = summarise(cases, scores)
    # Median over the set, at the default step count; CPU time counts both cores' work.
    figures["seconds_per_image"] = round(float(np.median(walls)), 4)
    figures["cpu_seconds_per_image"] = round(float(np.median(times)), 4)
    figures["torch_threads"] = torch.get_num_threads()
    figures["steps"], figures["guidance"] = steps, guidance
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    contact_sheet(cases, images, scores, out_dir / "contact_sheet.png")
    return figures


def vae_roundtrip(
    vae: Any, n: int = 120, native_area: int = 64 * 64, multiple: int = 8, seed: int = 5
) -> dict[str, float]:
    """How much of a scene survives the autoencoder alone: ground-truth scenes at the native
    size, encoded, decoded (on the autoencoder's device), resized as the engine resizes, scored.
    This is the ceiling of whatever the transformer learns (the issue wants shape >= 95 %).
    ``seed`` picks the scenes: 5 is the reported set, training selects on another."""
    import torch

    from training.embedded.data import to_tensor

    device = next(vae.parameters()).device
    rng = random.Random(seed)
    keys = ("background", "colour", "shape", "position", "count", "all")
    totals = dict.fromkeys(keys, 0.0)
    for i in range(n):
        ratio = EVAL_RATIOS[i % len(EVAL_RATIOS)]
        w, h = size_for(ratio, native_area, multiple)
        scene = random_scene(rng, w, h, rng.choice((1, 2)), train=False)
        with torch.no_grad():
            x = to_tensor(render(scene, w, h))[None].to(device)
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].float().cpu()
        arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(arr).resize(size_for(ratio, 256 * 256, 16), Image.Resampling.LANCZOS)
        s = score(scene, img)
        for k in keys:
            totals[k] += s[k]
    return {k: round(v / n, 4) for k, v in totals.items()}


SMOKE_RATIOS = ("1:1", "16:9")


def smoke_set(seed: int = 4321, singles: int = 10, pairs: int = 4) -> list[dict[str, Any]]:
    """A small fixed prompt set (two aspect ratios) for the regression test."""
    rng = random.Random(seed)
    cases: list[dict[str, Any]] = []
    for ratio in SMOKE_RATIOS:
        w, h = size_for(ratio, 256 * 256, 16)
        for kind, n, count in (("single", 1, singles), ("two", 2, pairs)):
            for _ in range(count):
                s = random_scene(rng, w, h, n, train=False)
                cases.append({"kind": kind, "ratio": ratio, "scene": s, "seed": rng.randrange(2**31)})
    return cases


def smoke_figures(checkpoint: Path) -> dict[str, float]:
    """Background, colour and full adherence over :func:`smoke_set` with the default steps."""
    run, _, _ = checkpoint_runner(checkpoint)
    cases = smoke_set()
    scores = [score(c["scene"], generate_case(run, c)) for c in cases]
    return {k: round(sum(s[k] for s in scores) / len(scores), 4) for k in ("background", "colour", "all")} | {
        "n": len(scores)
    }


def main() -> None:
    """The command line: ``python -m training.embedded.evaluate``."""
    from fluxserve.embedded import embedded_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=embedded_checkpoint())
    ap.add_argument("--out", type=Path, default=Path("eval-out"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--per-ratio", type=int, default=24)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="score only the small regression set and record it in the checkpoint's fluxserve.json",
    )
    args = ap.parse_args()
    if args.smoke:
        figures = smoke_figures(args.checkpoint)
        meta_path = args.checkpoint / "fluxserve.json"
        meta = json.loads(meta_path.read_text())
        meta["smoke_figures"] = figures
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return
    figures = evaluate_checkpoint(args.checkpoint, args.out, args.steps, args.guidance, args.per_ratio)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
