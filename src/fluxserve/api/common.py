"""Rules both protocol adapters apply on the way from a request to a GenerationSpec."""

from __future__ import annotations

import asyncio
import io
import json
from fractions import Fraction
from typing import Any

from PIL import Image

from fluxserve.catalog import ModelEntry
from fluxserve.images import ImageLimits, load_image_reference, normalize_image
from fluxserve.spec import MAX_RATIO, MIN_RATIO, SpecError, aspect_to_size, parse_aspect_ratio

MAX_INPUT_IMAGES = 4


def check_openai_size(width: int, height: int, param: str = "size") -> None:
    """OpenAI route sizes: sides multiples of 16 from 256 to 2048, at most 4 MP."""
    for side in (width, height):
        if side % 16 or not 256 <= side <= 2048:
            raise SpecError(
                f"{param}: width and height must be multiples of 16 between 256 and 2048, "
                f"got {width}x{height}",
                param,
            )
    if width * height > 4 * 1024 * 1024:
        raise SpecError(f"{param}: {width}x{height} is more than 4 megapixels", param)


def parse_size(size: str) -> tuple[int, int]:
    w, sep, h = size.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise SpecError(f"size must be 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got {size!r}", "size")
    width, height = int(w), int(h)
    check_openai_size(width, height)
    return width, height


def size_from_image(entry: ModelEntry, image_size: tuple[int, int]) -> tuple[int, int]:
    """Kontext without an aspect ratio follows the (first) input image's shape."""
    ratio = Fraction(image_size[0], image_size[1]).limit_denominator(1000)
    ratio = min(max(ratio, MIN_RATIO), MAX_RATIO)
    return aspect_to_size(ratio, entry.area)


def default_size(entry: ModelEntry) -> tuple[int, int]:
    if entry.family == "pro":
        return 1024, 768
    if entry.family == "ultra":
        return aspect_to_size(parse_aspect_ratio("16:9"), entry.area)
    return 1024, 1024


async def load_inputs(refs: list[tuple[str, str | bytes]], limits: ImageLimits) -> list[bytes]:
    """Fetch/decode and check each input image; returns normalized PNG bytes."""
    if len(refs) > MAX_INPUT_IMAGES:
        raise SpecError(
            f"at most {MAX_INPUT_IMAGES} input images are supported, got {len(refs)}", refs[-1][0]
        )
    out = []
    for param, ref in refs:
        data = ref if isinstance(ref, bytes) else await load_image_reference(ref, param, limits)
        out.append(await asyncio.to_thread(normalize_image, data, param, limits))
    return out


def image_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def sse_frame(event: str, data: dict[str, Any], event_id: str | int | None = None) -> bytes:
    """One server-sent event: optional id, event name, JSON data."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
