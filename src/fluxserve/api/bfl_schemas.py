"""The BFL API's request and response bodies, field for field as BFL documents them.

Bounds come from :mod:`fluxserve.spec`, so the OpenAPI document states the rules the spec
builder enforces.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fluxserve.api.loras import LoraInput
from fluxserve.spec import (
    MAX_GUIDANCE,
    MAX_GUIDANCE_FLUX2,
    MAX_LORAS,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEBHOOK_URL,
    MIN_GUIDANCE,
    MIN_STEPS,
    PROMPT_LIMITS,
)
from fluxserve.spec.geometry import FLUX2_MIN_SIDE, MAX_OUTPUT_PIXELS, SIDE_MULTIPLE

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


_IMAGE_FIELD = re.compile(r"input_image(?:_([0-9]+))?")
_SIDE = (
    f"Multiple of {SIDE_MULTIPLE}, at least {FLUX2_MIN_SIDE}; width x height at most 4 megapixels. "
    "0 or absent: the first input image's size (scaled to at most 1 MP), else 1024."
)


def _reference(n: int) -> Any:
    return Field(default=None, description=f"Reference image {n}: base64, data URL or http(s) URL.")


class Flux2Common(BaseModel):
    """Fields every FLUX.2 route takes (``flux-2-*``); unknown fields are refused, as BFL does."""

    model_config = ConfigDict(extra="forbid")
    max_input_images: ClassVar[int] = 4
    upsampling_default: ClassVar[bool] = False

    prompt: str = Field(max_length=MAX_PROMPT, description="Text prompt for image generation or editing.")
    input_image: str | None = Field(
        default=None, description="Reference image 1: base64, data URL or http(s) URL."
    )
    input_image_2: str | None = _reference(2)
    input_image_3: str | None = _reference(3)
    input_image_4: str | None = _reference(4)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Optional seed for reproducibility."
    )
    width: int | None = Field(default=None, description=_SIDE)
    height: int | None = Field(default=None, description=_SIDE)
    safety_tolerance: int = Field(default=2, ge=0, le=5, description="0 (most strict) to 5 (least strict).")
    output_format: Literal["jpeg", "png", "webp"] | None = "jpeg"
    prompt_upsampling: bool | None = Field(
        default=None, description="Rewrite the prompt with more detail before generation."
    )
    disable_pup: bool | None = Field(
        default=None, description="The other spelling: true turns prompt upsampling off."
    )
    webhook_url: str | None = Field(default=None, min_length=1, max_length=MAX_WEBHOOK_URL)
    webhook_secret: str | None = Field(default=None, max_length=1024)
    loras: list[LoraInput] | None = Field(
        default=None,
        max_length=MAX_LORAS,
        description="fluxserve: LoRA adapters to apply, by name (GET /v1/loras), each with a scale.",
    )

    @model_validator(mode="before")
    @classmethod
    def _image_count(cls, data: Any) -> Any:
        """Name the route's limit when a request gives a reference beyond it."""
        if isinstance(data, dict):
            for key, value in data.items():
                match = _IMAGE_FIELD.fullmatch(str(key))
                if match and value is not None and int(match[1] or 1) > cls.max_input_images:
                    raise ValueError(
                        f"this model takes at most {cls.max_input_images} input images "
                        f"(input_image to input_image_{cls.max_input_images}); {key} is beyond that"
                    )
        return data

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int | None) -> int | None:
        if not v:  # BFL's default is 0: take the size from the input image
            return None
        if v < FLUX2_MIN_SIDE or v % SIDE_MULTIPLE or v > MAX_OUTPUT_PIXELS // FLUX2_MIN_SIDE:
            raise ValueError(
                f"must be a multiple of {SIDE_MULTIPLE} of at least {FLUX2_MIN_SIDE} "
                f"(width x height at most 4 megapixels), got {v}"
            )
        return v

    @model_validator(mode="after")
    def _one_upsampling_answer(self) -> Flux2Common:
        if self.prompt_upsampling is not None and self.disable_pup is self.prompt_upsampling:
            raise ValueError("prompt_upsampling and disable_pup contradict each other: give one")
        return self

    def upsampling(self) -> bool:
        """Whether to upsample the prompt: ``prompt_upsampling``, else not ``disable_pup``,
        else the route's default (on for flex, as BFL's)."""
        if self.prompt_upsampling is not None:
            return self.prompt_upsampling
        if self.disable_pup is not None:
            return not self.disable_pup
        return self.upsampling_default

    def references(self) -> list[tuple[str, str]]:
        """The given reference images as (field, value), in field order."""
        names = ["input_image"] + [f"input_image_{i}" for i in range(2, self.max_input_images + 1)]
        return [(name, value) for name in names if (value := getattr(self, name, None))]


class Flux2KleinInputs(Flux2Common):
    """``flux-2-klein-4b``, ``flux-2-klein-9b``: like pro, with at most four reference images."""


class Flux2Inputs(Flux2Common):
    """``flux-2-pro``, ``flux-2-max``: a prompt, up to eight reference images, width and height."""

    max_input_images: ClassVar[int] = 8

    input_image_5: str | None = _reference(5)
    input_image_6: str | None = _reference(6)
    input_image_7: str | None = _reference(7)
    input_image_8: str | None = _reference(8)


class Flux2FlexInputs(Flux2Inputs):
    """``flux-2-flex``: pro's fields, plus steps and guidance; prompt upsampling on by default."""

    upsampling_default: ClassVar[bool] = True

    steps: int | None = Field(
        default=None,
        ge=MIN_STEPS,
        le=MAX_STEPS,
        description="Denoising steps, 1 to 50 (default: the model's, 50).",
    )
    guidance: float | None = Field(
        default=None,
        ge=MIN_GUIDANCE,
        le=MAX_GUIDANCE_FLUX2,
        description="Guidance, 1.5 to 10 (default: the model's, 5).",
    )


INPUTS: dict[str, type[CommonInputs] | type[Flux2Common]] = {
    "kontext": FluxKontextInputs,
    "pro": FluxProInputs,
    "ultra": FluxUltraInputs,
    "flux2": Flux2Inputs,
}
"""Request body per catalog family."""
INPUTS_BY_MODEL: dict[str, type[Flux2Common]] = {
    "flux-2-flex": Flux2FlexInputs,
    "flux-2-klein-4b": Flux2KleinInputs,
    "flux-2-klein-9b": Flux2KleinInputs,
}
"""Models whose route takes other fields than their family's (as BFL's routes do)."""


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
