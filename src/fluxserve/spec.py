"""The normalized generation request, and the size rules both protocols share."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal

OutputFormat = Literal["jpeg", "png", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")

ONE_MEGAPIXEL = 1024 * 1024
MIN_RATIO = Fraction(3, 7)
MAX_RATIO = Fraction(7, 3)
RATIO_RANGE_TEXT = "between 3:7 and 7:3 (21:9 and 9:21)"


class SpecError(ValueError):
    """A request value that breaks a rule; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_aspect_ratio(text: str) -> Fraction:
    """Parse ``"W:H"`` (positive integers) into a ratio within 3:7 .. 7:3."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SpecError(
            f"aspect_ratio must look like '16:9' (two positive integers), got {text!r}",
            "aspect_ratio",
        )
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise SpecError("aspect_ratio sides must be positive integers", "aspect_ratio")
    ratio = Fraction(w, h)
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise SpecError(
            f"aspect_ratio {text} is outside the supported range: it must be {RATIO_RANGE_TEXT}",
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


@dataclass(frozen=True)
class GenerationSpec:
    """One normalized, immutable request: what both protocol adapters produce."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    output_format: OutputFormat
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    num_images: int = 1
    output_compression: int | None = None
    input_images: tuple[str, ...] = ()
    """Storage keys of the normalized input images (saved before the job is queued)."""
    webhook_url: str | None = None
    webhook_secret: str | None = None
    protocol: Literal["bfl", "openai"] = "bfl"
    extras: dict[str, Any] = field(default_factory=dict)
    """Protocol details kept for rendering (response_format, user, raw ...)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_images"] = list(self.input_images)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationSpec:
        data = dict(data)
        data["input_images"] = tuple(data.get("input_images", ()))
        return cls(**data)
