"""What both protocol adapters share on the way in: input images, idempotency keys, SSE frames."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

from fastapi import Header, Request
from PIL import Image

from fluxserve.images import ImageLimits, load_image_reference, normalize_image, normalize_mask
from fluxserve.records import IdempotencyClaim
from fluxserve.spec import MAX_EDIT_IMAGES, SpecError

MAX_IDEMPOTENCY_KEY = 255


async def load_inputs(refs: list[tuple[str, str | bytes]], limits: ImageLimits) -> list[bytes]:
    """Fetch/decode and check each input image; returns normalized PNG bytes. The model's own
    limit is checked before (``spec.check_input_count``); this is only the absolute bound."""
    if len(refs) > MAX_EDIT_IMAGES:
        raise SpecError(f"at most {MAX_EDIT_IMAGES} input images are supported, got {len(refs)}", refs[-1][0])
    out = []
    for param, ref in refs:
        data = ref if isinstance(ref, bytes) else await load_image_reference(ref, param, limits)
        out.append(await asyncio.to_thread(normalize_image, data, param, limits))
    return out


async def load_mask(ref: tuple[str, str | bytes], image_size: tuple[int, int], limits: ImageLimits) -> bytes:
    """Fetch/decode an edit mask and normalize it for the first image (see ``normalize_mask``)."""
    param, value = ref
    data = value if isinstance(value, bytes) else await load_image_reference(value, param, limits)
    return await asyncio.to_thread(normalize_mask, data, param, limits, image_size)


def image_size(png: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image."""
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def idempotency_claim(request: Request, payload: Any) -> IdempotencyClaim | None:
    """The request's ``Idempotency-Key`` with a digest of its route and parsed content (not its
    raw bytes, which differ between retries of a multipart upload); None without the header."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise SpecError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            "Idempotency-Key",
        )
    try:
        text = json.dumps([request.url.path, payload], sort_keys=True, separators=(",", ":"), default=str)
    except (RecursionError, ValueError) as exc:  # adapters pass validated values; this is a backstop
        raise SpecError(
            "the request is nested too deeply to be used with an Idempotency-Key", "Idempotency-Key"
        ) from exc
    return IdempotencyClaim(key, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


def idempotency_key_header(
    idempotency_key: str | None = Header(
        default=None,
        alias="Idempotency-Key",
        description="Optional: a retry with the same key and the same body returns the job the "
        f"first request made instead of a new one. 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
        "characters, unique per request.",
    ),
) -> None:
    """Declares the ``Idempotency-Key`` header in the OpenAPI document (a route dependency);
    :func:`idempotency_claim` reads and checks it together with the request's content."""


def sse_frame(event: str, data: dict[str, Any], event_id: str | int | None = None) -> bytes:
    """One server-sent event: optional id, event name, JSON data."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
