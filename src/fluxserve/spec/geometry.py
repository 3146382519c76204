"""Image size geometry: aspect ratios, sizes on the multiple-of-16 grid, megapixel areas and
the size limits a request's width and height must meet."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from fluxserve.spec.errors import SpecError

ONE_MEGAPIXEL = 1024 * 1024
MIN_RATIO = Fraction(3, 7)
MAX_RATIO = Fraction(7, 3)
RATIO_RANGE_TEXT = "between 3:7 and 7:3 (21:9 and 9:21)"

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 256, 2048, 16
MAX_OUTPUT_PIXELS = 4 * ONE_MEGAPIXEL
FLUX2_MIN_SIDE = 64
"""FLUX.2 sizes: sides multiples of 16 from 64 pixels, at most 4 megapixels (as BFL's)."""

_RATIO = re.compile(r"\s*([0-9]{1,5})\s*:\s*([0-9]{1,5})\s*")
_SIZE = re.compile(r"([0-9]{1,5})[xX]([0-9]{1,5})")


def parse_aspect_ratio(text: str) -> Fraction:
    """Parse ``"W:H"`` (positive integers) into a ratio within 3:7 .. 7:3."""
    match = _RATIO.fullmatch(text)
    if match is None:
        raise SpecError(
            f"aspect_ratio must look like '16:9' (two positive integers), got {text[:40]!r}",
            "aspect_ratio",
        )
    w, h = int(match[1]), int(match[2])
    if w <= 0 or h <= 0:
        raise SpecError("aspect_ratio sides must be positive integers", "aspect_ratio")
    ratio = Fraction(w, h)
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise SpecError(
            f"aspect_ratio {text.strip()} is outside the supported range: it must be {RATIO_RANGE_TEXT}",
            "aspect_ratio",
        )
    return ratio


def aspect_to_size(
    ratio: Fraction | str,
    area: int = ONE_MEGAPIXEL,
    multiple: int = 16,
    tolerance: float = 0.05,
) -> tuple[int, int]:
    """Width and height for ``ratio`` at about ``area`` pixels.

    Both sides are multiples of ``multiple`` and the area is within ``tolerance`` of ``area``;
    among those sizes the one whose ratio is closest wins (then the one closest in area), so
    1:1 gives 1024x1024 and 16:9 gives the closest 16:9 the grid allows.
    """
    r = parse_aspect_ratio(ratio) if isinstance(ratio, str) else ratio
    target = float(r)
    best: tuple[float, float, int, int] | None = None
    ideal_w = math.sqrt(area * target)
    lo = max(multiple, int(ideal_w * 0.9) // multiple * multiple)
    hi = int(ideal_w * 1.1) // multiple * multiple + multiple
    for w in range(lo, hi + 1, multiple):
        for h in {
            max(multiple, math.floor(w / target / multiple) * multiple),
            max(multiple, math.ceil(w / target / multiple) * multiple),
        }:
            if abs(w * h - area) > tolerance * area:
                continue
            key = (abs(math.log((w / h) / target)), abs(w * h - area), w, h)
            if best is None or key < best:
                best = key
    if best is None:  # only reachable for extreme multiples; fall back to plain rounding
        h = max(multiple, round(math.sqrt(area / target) / multiple) * multiple)
        w = max(multiple, round(h * target / multiple) * multiple)
        return w, h
    return best[2], best[3]


def fit_area(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """The size with ``width:height``'s ratio at about ``area`` pixels, sides multiples of
    ``multiple`` (used to find a checkpoint's native size for a requested size)."""
    ratio = width / height
    w = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    h = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return w, h


def check_size(width: int, height: int, param: str = "size") -> None:
    """Explicit output sizes: sides multiples of 16 from 256 to 2048, at most 4 megapixels."""
    for side in (width, height):
        if side % SIDE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
            raise SpecError(
                f"{param}: width and height must be multiples of {SIDE_MULTIPLE} between "
                f"{MIN_SIDE} and {MAX_SIDE}, got {width}x{height}",
                param,
            )
    if width * height > MAX_OUTPUT_PIXELS:
        raise SpecError(f"{param}: {width}x{height} is more than 4 megapixels", param)


def parse_size(size: str) -> tuple[int, int]:
    """Parse an OpenAI ``size`` such as ``"1024x1536"`` and check it (see :func:`check_size`)."""
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        raise SpecError(
            f"size must be 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got {size[:40]!r}", "size"
        )
    width, height = int(match[1]), int(match[2])
    check_size(width, height)
    return width, height


def check_flux2_size(width: int, height: int, param: str = "width") -> None:
    """FLUX.2 output sizes: sides multiples of 16 of at least 64 pixels, at most 4 megapixels."""
    for side in (width, height):
        if side % SIDE_MULTIPLE or side < FLUX2_MIN_SIDE:
            raise SpecError(
                f"{param}: width and height must be multiples of {SIDE_MULTIPLE} of at least "
                f"{FLUX2_MIN_SIDE}, got {width}x{height}",
                param,
            )
    if width * height > MAX_OUTPUT_PIXELS:
        raise SpecError(f"{param}: {width}x{height} is more than 4 megapixels", param)
