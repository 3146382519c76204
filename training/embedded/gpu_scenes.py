"""Draw batches of laid-out scenes with torch, on any device (the GPU trainer's renderer).

The scenes are the ones of :mod:`training.embedded.scenes` (same shapes, colours, sizes and
centres); :func:`scene_tensors` turns laid-out ``Scene`` objects into a few tensors, and
:func:`render_batch` draws them all at once from signed distances: each subpixel's coverage is
``clamp(0.5 - distance, 0, 1)`` (a one-subpixel ramp), averaged over ``supersample`` x
``supersample`` subpixels, and the objects are composited over the background. A PIL render
(:func:`training.embedded.scenes.render`, 4x supersampled) and this one agree to within a few
levels per pixel on average (``tests/test_embedded_gpu_training.py`` holds the tolerance); they
differ only on outline pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fluxserve.embedded.vocabulary import COLOURS, SHAPES
from training.embedded.scenes import Scene

COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}
SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}
# PIL draws ellipses and rectangles with their far edge inclusive: half a subpixel more
# (of its 4x supersampled canvas) on every side.
PIL_GROW = 0.125


def palette(device: torch.device | str = "cpu") -> torch.Tensor:
    """The twelve colours as a (12, 3) tensor in [-1, 1] (the images' value range)."""
    rgb = torch.tensor([COLOURS[c] for c in COLOURS], dtype=torch.float32, device=device)
    return rgb / 127.5 - 1.0


@dataclass
class SceneTensors:
    """A batch of laid-out scenes of at most ``k`` objects, as tensors (pixels of a w x h image).

    ``background`` (b,) colour indices; ``shape``, ``colour`` (b, k) indices; ``centre``
    (b, k, 2) x and y in pixels; ``diameter`` (b, k) in pixels; ``present`` (b, k) whether the
    slot holds an object.
    """

    background: torch.Tensor
    shape: torch.Tensor
    colour: torch.Tensor
    centre: torch.Tensor
    diameter: torch.Tensor
    present: torch.Tensor

    def to(self, device: torch.device | str) -> SceneTensors:
        """The same batch on ``device``."""
        return SceneTensors(*(getattr(self, f).to(device, non_blocking=True) for f in self.__annotations__))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The tensors by name (to send between processes)."""
        return {f: getattr(self, f) for f in self.__annotations__}


def scene_tensors(scenes: Sequence[Scene], w: int, h: int, k: int = 2) -> SceneTensors:
    """Laid-out scenes (centres set, as ``scenes.layout`` returns them) as tensors for w x h."""
    shape, colour, centre, diameter, present = [], [], [], [], []
    for s in scenes:
        if len(s.objects) > k:
            raise ValueError(f"a scene has {len(s.objects)} objects, more than {k}")
        pad = k - len(s.objects)
        shape.append([SHAPE_INDEX[o.shape] for o in s.objects] + [0] * pad)
        colour.append([COLOUR_INDEX[o.colour] for o in s.objects] + [0] * pad)
        centre.append([(o.cx * w, o.cy * h) for o in s.objects] + [(0.0, 0.0)] * pad)
        diameter.append([o.diameter(w, h) for o in s.objects] + [0.0] * pad)
        present.append([True] * len(s.objects) + [False] * pad)
    out = SceneTensors(
        background=torch.tensor([COLOUR_INDEX[s.background] for s in scenes], dtype=torch.long),
        shape=torch.tensor(shape, dtype=torch.long).view(len(scenes), k),
        colour=torch.tensor(colour, dtype=torch.long).view(len(scenes), k),
        centre=torch.tensor(centre, dtype=torch.float32).view(len(scenes), k, 2),
        diameter=torch.tensor(diameter, dtype=torch.float32).view(len(scenes), k),
        present=torch.tensor(present, dtype=torch.bool).view(len(scenes), k),
    )
    return out


def _convex(px: torch.Tensor, py: torch.Tensor, verts: list[tuple[float, float]]) -> torch.Tensor:
    """Signed distance (negative inside) to a convex polygon of unit-scale vertices (either
    winding), as the largest distance to one of its edge lines."""
    edges = list(zip(verts, verts[1:] + verts[:1], strict=True))
    turn = 1.0 if sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in edges) > 0 else -1.0
    out = None
    for (x1, y1), (x2, y2) in edges:
        nx, ny = turn * (y2 - y1), turn * (x1 - x2)  # pointing out of the polygon
        norm = math.hypot(nx, ny)
        d = ((px - x1) * nx + (py - y1) * ny) / norm
        out = d if out is None else torch.maximum(out, d)
    assert out is not None
    return out


def _star_pieces() -> list[list[tuple[float, float]]]:
    """The five-pointed star of ``scenes._polygon`` (unit radius, centre at 0) as six convex
    pieces: the inner pentagon and five point triangles."""
    pts = []
    for i in range(10):
        rad = 1.0 if i % 2 == 0 else 0.382
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((rad * math.cos(a), rad * math.sin(a) + 0.05))
    inner = pts[1::2]
    pieces = [inner]
    for i in range(5):
        pieces.append([pts[(2 * i - 1) % 10], pts[2 * i], pts[2 * i + 1]])
    return pieces


STAR = _star_pieces()
TRIANGLE = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]


def unit_distance(shape: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance to shape number ``shape`` (an index of ``SHAPES``) of radius 1 at the
    origin, at points (px, py) in units of that radius (negative inside)."""
    name = SHAPES[shape]
    if name == "circle":
        return torch.sqrt(px * px + py * py) - 1.0
    if name == "ring":
        r = torch.sqrt(px * px + py * py)
        return torch.maximum(r - 1.0, 0.5 - r)
    if name == "square":
        return torch.maximum(px.abs(), py.abs()) - 1.0
    if name == "diamond":
        return (px.abs() + py.abs() - 1.0) / math.sqrt(2.0)
    if name == "triangle":
        return _convex(px, py, TRIANGLE)
    if name == "star":
        out = _convex(px, py, STAR[0])
        for piece in STAR[1:]:
            out = torch.minimum(out, _convex(px, py, piece))
        return out
    raise ValueError(name)


def coverage(st: SceneTensors, w: int, h: int, supersample: int = 2) -> torch.Tensor:
    """Each object's share of each pixel, (b, k, h, w) in [0, 1] (0 for empty slots)."""
    device = st.centre.device
    s = supersample
    xs = (torch.arange(w * s, device=device, dtype=torch.float32) + 0.5) / s
    ys = (torch.arange(h * s, device=device, dtype=torch.float32) + 0.5) / s
    b, k = st.shape.shape
    flat_shape, flat_present = st.shape.reshape(-1), st.present.reshape(-1)
    cx, cy = st.centre[..., 0].reshape(-1), st.centre[..., 1].reshape(-1)
    radius = st.diameter.reshape(-1) / 2
    out = torch.zeros(b * k, h * s, w * s, device=device)
    for shape in range(len(SHAPES)):
        idx = torch.nonzero((flat_shape == shape) & flat_present).flatten()
        if idx.numel() == 0:
            continue
        grow = PIL_GROW if SHAPES[shape] in ("circle", "ring", "square") else 0.0
        r = (radius[idx] + grow)[:, None, None]
        px = (xs[None, None, :] - cx[idx][:, None, None]) / r
        py = (ys[None, :, None] - cy[idx][:, None, None]) / r
        dist = unit_distance(shape, px, py) * r * s  # in subpixels
        out[idx] = (0.5 - dist).clamp(0.0, 1.0)
    if s > 1:
        out = F.avg_pool2d(out[:, None], s)[:, 0]
    return out.view(b, k, h, w)


def render_batch(st: SceneTensors, w: int, h: int, supersample: int = 2) -> torch.Tensor:
    """The scenes drawn at w x h: (b, 3, h, w) float in [-1, 1], on the tensors' device."""
    pal = palette(st.centre.device)
    cov = coverage(st, w, h, supersample)
    img = pal[st.background][:, :, None, None].expand(-1, -1, h, w)
    for j in range(st.shape.shape[1]):
        a = cov[:, j, None]
        img = img * (1 - a) + pal[st.colour[:, j]][:, :, None, None] * a
    return img


def object_masks(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """1.0 where a pixel is clearly not its scene's background colour, as
    :func:`training.embedded.data.object_mask` decides it: (b, h, w)."""
    bg = palette(images.device)[background][:, :, None, None]
    return ((images - bg).abs().sum(1) * 127.5 > 60).float()


def outline(mask: torch.Tensor) -> torch.Tensor:
    """1.0 on the pixels within one pixel of an object's outline, (b, h, w)."""
    m = mask[:, None]
    grown = F.max_pool2d(m, 3, 1, 1)
    shrunk = -F.max_pool2d(-m, 3, 1, 1)
    return (grown - shrunk)[:, 0]
