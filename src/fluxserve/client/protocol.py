"""The interface that each protocol module (:mod:`.bfl`, :mod:`.openai`) implements.

The client picks one implementation when it is built; after that, generating an image is the
same call whichever protocol the server speaks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fluxserve.client.inputs import ImageInput
from fluxserve.client.models import GenerationResult


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as the client hands it to a protocol."""

    prompt: str
    model: str
    params: dict[str, Any]
    """The options the caller set (aspect_ratio, seed, ...); unset ones are left out."""
    images: list[bytes]
    """Input images, read into bytes."""
    originals: Sequence[ImageInput]
    """The input images as the caller gave them, in the same order as ``images``."""
    started: float
    """``time.monotonic()`` when the request was ready: the zero of the result's timings."""


class ImagesApi(Protocol):
    """A server protocol: turns a :class:`GenerationRequest` into a downloaded result."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit the request, wait for the image, download it, and report the timings."""
        ...


def idempotency_headers() -> dict[str, str]:
    """A fresh ``Idempotency-Key``: a submit that is retried stays one job on the server."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def format_of(data: bytes) -> str:
    """The image format from the leading bytes: jpeg, png or webp (png if unknown)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"
