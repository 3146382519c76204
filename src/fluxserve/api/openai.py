"""The OpenAI Images API: ``/v1/images/generations``, ``/v1/images/edits``, ``/v1/models``.

FLUX options arrive at the top level (where the official client's ``extra_body`` puts them)
or nested under a literal ``"extra_body"`` object (raw-HTTP callers); both are accepted.
A call is an async job that this adapter waits on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.datastructures import UploadFile

from fluxserve.api.common import (
    check_openai_size,
    default_size,
    image_size,
    load_inputs,
    parse_size,
    size_from_image,
    sse_frame,
)
from fluxserve.api.errors import OpenAIError
from fluxserve.api.state import AppState, check_key, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.images import InputImageError
from fluxserve.jobs import Job, JobStatus
from fluxserve.jobs.idempotency import IdempotencyConflict, body_hash
from fluxserve.jobs.service import new_seed
from fluxserve.spec import GenerationSpec, SpecError, aspect_to_size, parse_aspect_ratio

FLUX_OPTIONS = (
    "aspect_ratio",
    "seed",
    "safety_tolerance",
    "output_format",
    "prompt_upsampling",
    "steps",
    "guidance",
    "width",
    "height",
)
DEFAULT_MODEL = "flux-kontext-pro"


def openai_auth(request: Request) -> str | None:
    allowed, key_id = check_key(request)
    if not allowed:
        raise OpenAIError(
            401,
            "Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>' "
            "(create one with: fluxserve keys create).",
            code="invalid_api_key",
        )
    return key_id


router = APIRouter(tags=["OpenAI Images API"])


class ImageOptions(BaseModel):
    """Fields shared by generations and edits, including the FLUX extensions."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=10)
    size: str | None = "auto"
    response_format: Literal["url", "b64_json"] | None = "url"
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    user: str | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    # FLUX options (extra_body)
    aspect_ratio: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 16)
    safety_tolerance: int = Field(default=2, ge=0, le=6)
    prompt_upsampling: bool = False
    steps: int | None = Field(default=None, ge=1, le=50)
    guidance: float | None = Field(default=None, ge=1.5, le=5.0)
    width: int | None = None
    height: int | None = None
    # streaming (server-sent events)
    stream: bool | None = False
    partial_images: int | None = Field(default=None, ge=0, le=3)

    @model_validator(mode="before")
    @classmethod
    def _merge_extra_body(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("extra_body"), dict):
            nested = data["extra_body"]
            data = {k: v for k, v in data.items() if k != "extra_body"}
            for k, v in nested.items():
                data.setdefault(k, v)
        return data

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, v: str | None) -> str | None:
        if v is not None:
            parse_aspect_ratio(v)
        return v

    @field_validator("output_format", mode="before")
    @classmethod
    def _jpg(cls, v: Any) -> Any:
        return "jpeg" if v == "jpg" else v


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _entry(state: AppState, model: str | None) -> ModelEntry:
    model_id = model or DEFAULT_MODEL
    entry = state.catalog.get(model_id)
    if entry is None:
        raise OpenAIError(
            404,
            f"The model '{model_id}' does not exist. GET /v1/models lists the models this server has.",
            param="model",
            code="model_not_found",
        )
    return entry


def _size(entry: ModelEntry, opts: ImageOptions, first_image: tuple[int, int] | None) -> tuple[int, int]:
    if opts.width is not None or opts.height is not None:
        if opts.width is None or opts.height is None:
            raise SpecError("give both width and height, or neither", "width")
        check_openai_size(opts.width, opts.height, "width")
        return opts.width, opts.height
    if opts.aspect_ratio:
        return aspect_to_size(parse_aspect_ratio(opts.aspect_ratio), entry.area)
    if opts.size and opts.size != "auto":
        return parse_size(opts.size)
    if first_image is not None:
        return size_from_image(entry, first_image)
    return default_size(entry)


async def _run(
    request: Request,
    state: AppState,
    opts: ImageOptions,
    entry: ModelEntry,
    inputs: list[bytes],
    key_id: str | None,
    kind: str = "image_generation",
    stream: bool = False,
    partial_images: int = 0,
    idempotency_payload: Any = None,
) -> Any:
    try:
        width, height = _size(entry, opts, image_size(inputs[0]) if inputs else None)
    except SpecError as exc:
        raise OpenAIError(400, exc.message, param=exc.param, code="invalid_value") from exc
    spec = GenerationSpec(
        model=entry.id,
        prompt=opts.prompt,
        width=width,
        height=height,
        seed=opts.seed if opts.seed is not None else new_seed(),
        steps=opts.steps or entry.steps,
        guidance=opts.guidance if opts.guidance is not None else entry.guidance,
        output_format=opts.output_format or "png",
        safety_tolerance=opts.safety_tolerance,
        prompt_upsampling=opts.prompt_upsampling,
        num_images=opts.n or 1,
        output_compression=opts.output_compression,
        protocol="openai",
        extras={
            "response_format": opts.response_format or "url",
            "user": opts.user,
            "base_url": state.base_url(request),
            "partial_images": partial_images if stream else 0,
        },
    )
    job = await _submit_idempotent(request, state, spec, inputs, key_id, idempotency_payload)
    if stream:
        return StreamingResponse(
            _stream_events(request, state, job.id, kind),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    done = await _wait_or_cancel(request, state, job.id)
    return render(request, state, job.id, done)


async def _submit_idempotent(
    request: Request,
    state: AppState,
    spec: GenerationSpec,
    inputs: list[bytes],
    key_id: str | None,
    payload: Any,
) -> Job:
    """Submit, or with an Idempotency-Key return the job an identical earlier request made."""
    idem_key = request.headers.get("idempotency-key")
    if not idem_key:
        return await state.service.submit(spec, inputs, api_key_id=key_id)
    owner = key_id or ""
    digest = body_hash(request.url.path, [payload, [hashlib.sha256(i).hexdigest() for i in inputs]])
    try:
        existing = await state.idempotency.claim(idem_key, owner, digest)
    except IdempotencyConflict as exc:
        raise OpenAIError(
            409,
            "This Idempotency-Key was already used with a different request body; use a new "
            "key for a new request.",
            param="Idempotency-Key",
            code="idempotency_conflict",
        ) from exc
    if existing:
        job = state.service.get(existing)
        if job is not None:
            return job
    try:
        job = await state.service.submit(spec, inputs, api_key_id=key_id)
    except BaseException:
        state.idempotency.release(idem_key, owner)
        raise
    state.idempotency.bind(idem_key, owner, job.id)
    return job


async def _wait_or_cancel(request: Request, state: AppState, job_id: str) -> Job | None:
    """Wait for the job; if the client goes away first, cancel it (nobody wants it now)."""
    deadline = time.monotonic() + state.settings.sync_timeout_s
    while True:
        job = await state.service.wait(job_id, min(0.25, max(0.0, deadline - time.monotonic())))
        if job is None or job.terminal or time.monotonic() >= deadline:
            return job
        if await request.is_disconnected():
            state.service.cancel(job_id)
            return state.service.get(job_id)


def _usage(job: Job) -> dict[str, Any]:
    text_tokens = len(job.spec.prompt.split())
    return {
        "total_tokens": text_tokens,
        "input_tokens": text_tokens,
        "output_tokens": 0,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
    }


async def _stream_events(request: Request, state: AppState, job_id: str, kind: str) -> AsyncIterator[bytes]:
    """OpenAI's image stream: ``<kind>.partial_image`` events, then ``<kind>.completed`` per
    image (or an error event). The job is cancelled if the client goes away."""
    finished = False
    try:
        job = state.service.get(job_id)
        assert job is not None
        common = {
            "size": f"{job.spec.width}x{job.spec.height}",
            "quality": "auto",
            "background": "opaque",
            "output_format": job.spec.output_format,
        }
        if not job.terminal:
            async for event in state.service.events.subscribe(job_id):
                if event.type == "partial":
                    yield sse_frame(
                        f"{kind}.partial_image",
                        {
                            "type": f"{kind}.partial_image",
                            "b64_json": event.data["b64_json"],
                            "created_at": int(time.time()),
                            "partial_image_index": event.data["index"],
                            **common,
                        },
                    )
        # subscribe() ends with the job's "end" event (replayed if it already happened)
        job = state.service.get(job_id)
        finished = True
        if job is None or job.status != JobStatus.READY or job.result is None:
            try:
                render(request, state, job_id, job)
            except OpenAIError as exc:
                yield sse_frame("error", exc.body)
            return
        for key in job.result["files"]:
            b64 = base64.b64encode(state.storage.get(key)).decode()
            yield sse_frame(
                f"{kind}.completed",
                {
                    "type": f"{kind}.completed",
                    "b64_json": b64,
                    "created_at": int(time.time()),
                    "usage": _usage(job),
                    **common,
                },
            )
    finally:
        if not finished:
            state.service.cancel(job_id)


def render(request: Request, state: AppState, job_id: str, job: Job | None) -> ImagesResponse:
    if job is None:
        raise OpenAIError(500, f"job {job_id} disappeared", type="server_error")
    if not job.terminal:
        raise OpenAIError(
            504,
            f"Generation is still running after {state.settings.sync_timeout_s:.0f}s. It is job "
            f"{job.id}: poll GET /v1/get_result?id={job.id} for its result.",
            type="server_error",
            code="timeout",
        )
    if job.status == JobStatus.REQUEST_MODERATED or job.status == JobStatus.CONTENT_MODERATED:
        category = (job.details or {}).get("moderation", {}).get("category", "unspecified")
        raise OpenAIError(
            400,
            f"Your request was rejected by the safety system (category: {category}).",
            code="moderation_blocked",
        )
    if job.status != JobStatus.READY or job.result is None:
        error = (job.details or {}).get("error", "unknown error")
        raise OpenAIError(
            500,
            f"Generation failed for job {job.id}: {error}",
            type="server_error",
            code="generation_failed",
        )
    spec = job.spec
    revised = job.result["prompt"] if spec.prompt_upsampling else None
    data = []
    for key in job.result["files"]:
        if spec.extras.get("response_format") == "b64_json":
            b64 = base64.b64encode(state.storage.get(key)).decode()
            data.append(ImageData(b64_json=b64, revised_prompt=revised))
        else:
            url = state.file_url(state.base_url(request), key)
            data.append(ImageData(url=url, revised_prompt=revised))
    return ImagesResponse(
        created=int(job.created_at),
        data=data,
        output_format=spec.output_format,
        size=f"{spec.width}x{spec.height}",
    )


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
)
async def create_image(
    body: ImageOptions,
    request: Request,
    key_id: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> ImagesResponse:
    """Generate images (OpenAI ``images.generate``)."""
    return await _run(
        request,
        state,
        body,
        _entry(state, body.model),
        [],
        key_id,
        "image_generation",
        bool(body.stream),
        body.partial_images or 0,
        body.model_dump(mode="json"),
    )


def _validation_to_openai(exc: ValidationError) -> OpenAIError:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    msg = str(err["msg"]).removeprefix("Value error, ")
    return OpenAIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "image[]": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "prompt": {"type": "string"},
                        },
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {"image_url": {"type": "string"}},
                                },
                            },
                            "prompt": {"type": "string"},
                        },
                    }
                },
            },
            "required": True,
        }
    },
)
async def edit_image(
    request: Request,
    key_id: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> ImagesResponse:
    """Edit images with a Kontext model (OpenAI ``images.edit``): multipart or JSON."""
    refs: list[tuple[str, str | bytes]] = []
    fields: dict[str, Any]
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=8, max_fields=64)
        fields = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in ("image", "image[]"):
                    raise OpenAIError(
                        400,
                        f"'{name}' is not supported: fluxserve edits follow the prompt (no mask).",
                        param=name,
                        code="unsupported",
                    )
                data = await value.read(state.limits.max_bytes + 1)
                refs.append((f"image[{len(refs)}]", data))
            else:
                fields[name] = value
        if "extra_body" in fields:  # a raw caller may send the nested object as JSON text
            try:
                fields["extra_body"] = json.loads(fields["extra_body"])
            except ValueError as exc:
                raise OpenAIError(400, "extra_body must be a JSON object", param="extra_body") from exc
    elif ctype.startswith("application/json"):
        try:
            fields = await request.json()
        except ValueError as exc:
            raise OpenAIError(400, "the body is not valid JSON") from exc
        if not isinstance(fields, dict):
            raise OpenAIError(400, "the body must be a JSON object")
        for i, item in enumerate(fields.pop("images", None) or []):
            if not isinstance(item, dict) or not isinstance(item.get("image_url"), str):
                raise OpenAIError(
                    400,
                    "each entry of 'images' needs an 'image_url' (URL or data URL); file_id is not supported",
                    param=f"images[{i}]",
                )
            refs.append((f"images[{i}]", item["image_url"]))
        if fields.get("mask") is not None:
            raise OpenAIError(400, "'mask' is not supported: edits follow the prompt", param="mask")
    else:
        raise OpenAIError(400, "send multipart/form-data (image=...) or JSON (images=[...])")
    if not refs:
        raise OpenAIError(400, "at least one image is required", param="image")
    try:
        opts = ImageOptions.model_validate(fields)
    except ValidationError as exc:
        raise _validation_to_openai(exc) from exc
    entry = _entry(state, opts.model)
    if not entry.takes_images:
        raise OpenAIError(
            400,
            f"model '{entry.id}' does not take input images; use a Kontext model such as flux-kontext-pro",
            param="model",
        )
    try:
        inputs = await load_inputs(refs, state.limits)
    except (SpecError, InputImageError) as exc:
        raise OpenAIError(400, exc.message, param=exc.param, code="invalid_image") from exc
    return await _run(
        request,
        state,
        opts,
        entry,
        inputs,
        key_id,
        "image_edit",
        bool(opts.stream),
        opts.partial_images or 0,
        fields,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    key_id: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> ModelList:
    """The catalog, in OpenAI's list format."""
    created = int(time.time())
    return ModelList(
        data=[ModelObject(id=e.id, created=created, owned_by="fluxserve") for e in state.catalog]
    )


class PriceList(BaseModel):
    currency: Literal["USD"] = "USD"
    prices: dict[str, float]
    """Price of one image, per model id."""


@router.get("/v1/prices", response_model=PriceList, tags=["Service"])
async def list_prices(
    key_id: str | None = Depends(openai_auth), state: AppState = Depends(get_state)
) -> PriceList:
    """What one image of each model costs on this server (the catalog's prices), so that
    clients can estimate the cost of a batch before running it."""
    return PriceList(prices={e.id: e.price for e in state.catalog})
