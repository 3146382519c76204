"""The BFL API's request and response bodies, field for field as BFL documents them.

Bounds come from :mod:`fluxserve.spec`, so the OpenAPI document states the rules the spec
builder enforces.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxserve.api.loras import LoraInput
from fluxserve.spec import (
    MAX_GUIDANCE,
    MAX_LORAS,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEBHOOK_URL,
    MIN_GUIDANCE,
    MIN_STEPS,
    PROMPT_LIMITS,
)

BFLStatus = Literal["Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"]
MAX_PROMPT = PROMPT_LIMITS["bfl"]


class CommonInputs(BaseModel):
    """Fields every BFL generation route takes."""

    model_config = ConfigDict(extra="ignore")

    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Optional seed for reproducibility."
    )
    prompt_upsampling: bool = Field(
        default=False, description="Rewrite the prompt with more detail before generation."
    )
    safety_tolerance: int = Field(default=2, ge=0, le=6, description="0 (most strict) to 6 (least strict).")
    webhook_url: str | None = Field(default=None, min_length=1, max_length=MAX_WEBHOOK_URL)
    webhook_secret: str | None = Field(default=None, max_length=1024)
    steps: int | None = Field(
        default=None, ge=MIN_STEPS, le=MAX_STEPS, description="Denoising steps (default: the model's)."
    )
    guidance: float | None = Field(
        default=None, ge=MIN_GUIDANCE, le=MAX_GUIDANCE, description="Guidance (default: the model's)."
    )
    loras: list[LoraInput] | None = Field(
        default=None,
        max_length=MAX_LORAS,
        description="LoRA adapters to apply, by name (GET /v1/loras), each with a scale.",
    )


class FluxKontextInputs(CommonInputs):
    """``flux-kontext-*``: a prompt, up to four input images, an aspect ratio."""

    prompt: str = Field(max_length=MAX_PROMPT, description="Text prompt for image generation.")
    input_image: str | None = Field(default=None, description="Base64, data URL or http(s) URL.")
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: str | None = Field(
        default=None, max_length=16, description="Between 21:9 and 9:21 (3:7 to 7:3)."
    )
    output_format: Literal["jpeg", "png", "webp"] | None = "png"


class FluxProInputs(CommonInputs):
    """``flux-pro-1.1``, ``flux-pro``, ``flux-dev``: width and height."""

    prompt: str | None = Field(default="", max_length=MAX_PROMPT)
    image_prompt: str | None = None
    width: int = Field(default=1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(default=768, ge=256, le=1440, multiple_of=32)
    output_format: Literal["jpeg", "png", "webp"] | None = "jpeg"


class FluxUltraInputs(CommonInputs):
    """``flux-pro-1.1-ultra``: an aspect ratio at about four megapixels."""

    prompt: str | None = Field(default="", max_length=MAX_PROMPT)
    aspect_ratio: str = Field(
        default="16:9", max_length=16, description="Between 21:9 and 9:21 (3:7 to 7:3)."
    )
    raw: bool = False
    image_prompt: str | None = None
    image_prompt_strength: float = Field(default=0.1, ge=0.0, le=1.0)
    output_format: Literal["jpeg", "png", "webp"] | None = "jpeg"


INPUTS: dict[str, type[CommonInputs]] = {
    "kontext": FluxKontextInputs,
    "pro": FluxProInputs,
    "ultra": FluxUltraInputs,
}


class AsyncResponse(BaseModel):
    """The answer to a submission: where to poll."""

    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


class ResultResponse(BaseModel):
    """``get_result``'s answer."""

    id: str
    status: BFLStatus
    result: Any | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None
