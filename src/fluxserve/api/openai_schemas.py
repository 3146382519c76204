"""The OpenAI Images API's request and response bodies, with the FLUX extensions.

FLUX options arrive at the top level (where the official client's ``extra_body`` puts them)
or nested under a literal ``"extra_body"`` object (raw-HTTP callers); both are accepted.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fluxserve.api.loras import LoraInput
from fluxserve.spec import (
    MAX_EDIT_IMAGES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_LORAS,
    MAX_PARTIAL_IMAGES,
    MAX_SEED,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    PROMPT_LIMITS,
)

DEFAULT_MODEL = "flux-kontext-pro"


class ImageOptions(BaseModel):
    """``images.generate``: OpenAI's fields and the FLUX extensions (``extra_body``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=PROMPT_LIMITS["openai"])
    model: str | None = Field(default=None, max_length=200)
    n: int | None = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(default="auto", max_length=32)
    response_format: Literal["url", "b64_json"] | None = None
    """Default: ``b64_json`` for the GPT-image names (as OpenAI answers), ``url`` for the others."""
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    user: str | None = Field(default=None, max_length=1024)
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] | None = None
    """Without ``steps``: low takes half the model's steps, medium three quarters, the others all."""
    style: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    """``transparent`` (png or webp): the plain background around the subject becomes alpha."""
    input_fidelity: Literal["high", "low"] | None = None
    """Edits: ``low`` scales input images to at most 1 MP first, ``high`` keeps up to 4 MP."""
    moderation: str | None = None
    # FLUX options (extra_body)
    aspect_ratio: str | None = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    safety_tolerance: int = Field(default=2, ge=0, le=6)
    prompt_upsampling: bool = False
    steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    guidance: float | None = Field(default=None, ge=MIN_GUIDANCE, le=MAX_GUIDANCE)
    width: int | None = None
    height: int | None = None
    loras: list[LoraInput] | None = Field(default=None, max_length=MAX_LORAS)
    """LoRA adapters by name (GET /v1/loras); a form field of an edit carries them as JSON text."""
    # streaming (server-sent events)
    stream: bool | None = False
    partial_images: int | None = Field(default=None, ge=0, le=MAX_PARTIAL_IMAGES)

    @model_validator(mode="before")
    @classmethod
    def _merge_extra_body(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("extra_body"), dict):
            nested = data["extra_body"]
            data = {k: v for k, v in data.items() if k != "extra_body"}
            for k, v in nested.items():
                data.setdefault(k, v)
        return data

    @field_validator("output_format", mode="before")
    @classmethod
    def _jpg(cls, v: Any) -> Any:
        return "jpeg" if v == "jpg" else v

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_form(cls, v: Any) -> Any:
        if isinstance(v, str):  # multipart edits: the list as JSON text
            try:
                return json.loads(v)
            except (ValueError, RecursionError) as exc:
                raise ValueError('loras must be a JSON list such as [{"name": "x", "scale": 0.8}]') from exc
        return v


class ImageReference(BaseModel):
    """One input image of a JSON edit: a URL or a data URL."""

    image_url: str = Field(max_length=30_000_000)


class EditJSON(ImageOptions):
    """``images.edit`` as JSON: ``images`` instead of uploads."""

    images: list[ImageReference] = Field(min_length=1, max_length=MAX_EDIT_IMAGES)
    mask: ImageReference | None = Field(
        default=None,
        description="A PNG whose fully transparent pixels mark where to edit the first image "
        "(same shape as it); FLUX.1 Kontext models only.",
    )


class EditMultipart(ImageOptions):
    """``images.edit`` as multipart/form-data: one to four ``image`` (or ``image[]``) files."""

    image: list[bytes] = Field(min_length=1, max_length=MAX_EDIT_IMAGES)
    mask: bytes | None = Field(
        default=None,
        description="A PNG whose fully transparent pixels mark where to edit the first image "
        "(same shape as it); FLUX.1 Kontext models only.",
    )


class ImageData(BaseModel):
    """One image of an answer."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    """The input tokens by kind (OpenAI's ``input_tokens_details``)."""

    text_tokens: int
    image_tokens: int


class OutputTokensDetails(BaseModel):
    """The output tokens by kind (OpenAI's ``output_tokens_details``)."""

    image_tokens: int
    text_tokens: int = 0


class ImagesUsage(BaseModel):
    """Token counts, in FLUX's own units: one text token per word of the prompt, one image
    token per 16x16 pixels (a FLUX latent token), for input images and generated images alike."""

    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails | None = None


class ImagesResponse(BaseModel):
    """The answer to a generation or an edit; it echoes the settings used, as OpenAI's does."""

    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: str | None = None
    quality: Literal["low", "medium", "high"] | None = None
    size: str | None = None
    usage: ImagesUsage | None = None


class ModelObject(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (OpenAPI resolves ``$ref`` from the
    document root, where a model's own ``$defs`` are not)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def request_body(contents: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` generated from a model per content type (for a route that
    parses its body itself because it takes more than one content type)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                ctype: {"schema": _inline_refs(model.model_json_schema())}
                for ctype, model in contents.items()
            },
        }
    }
