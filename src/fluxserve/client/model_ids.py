"""The model ids the SDK knows by name, and how many reference images each takes.

The ids are the BFL API's (``POST /v1/<id>``); a server may serve more (its own ids), which
the SDK passes through unchecked up to :data:`MAX_REFERENCE_IMAGES`, leaving the limit to the
server.
"""

from __future__ import annotations

from typing import Final

FLUX2_MODELS: Final[tuple[str, ...]] = (
    "flux-2-pro",
    "flux-2-max",
    "flux-2-flex",
    "flux-2-pro-preview",
    "flux-2-klein-4b",
    "flux-2-klein-9b",
    "flux-2-klein-9b-preview",
)
"""FLUX.2: text to image, and editing with reference images (``input_image`` ... ``_8``);
they take ``width`` and ``height`` (multiples of 16), not ``aspect_ratio``."""

KONTEXT_MODELS: Final[tuple[str, ...]] = ("flux-kontext-pro", "flux-kontext-max")
"""FLUX.1 Kontext: text to image and editing with up to four input images."""

GPT_IMAGE_MODELS: Final[tuple[str, ...]] = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
"""OpenAI's GPT image names (OpenAI protocol): editing with up to 16 input images."""

MAX_REFERENCE_IMAGES: Final = 16
"""The most input images any model takes (OpenAI's GPT image names)."""

_LIMITS: Final[dict[str, int]] = {
    **dict.fromkeys(FLUX2_MODELS, 8),
    # klein takes four references, as on the BFL API.
    **dict.fromkeys((m for m in FLUX2_MODELS if "klein" in m), 4),
    **dict.fromkeys(KONTEXT_MODELS, 4),
    **dict.fromkeys(GPT_IMAGE_MODELS, 16),
}


def max_input_images(model: str) -> int:
    """How many input images ``model`` takes: its BFL limit when the SDK knows the id, else
    :data:`MAX_REFERENCE_IMAGES` (the server checks its own models)."""
    return _LIMITS.get(model, MAX_REFERENCE_IMAGES)
