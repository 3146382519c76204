"""The OpenAI Images API: ``/v1/images/generations``, ``/v1/images/edits``, ``/v1/models``.

A call is an async job that this adapter waits on (or streams, with ``stream: true``).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from fluxserve.accounts import InsufficientCredits, LimitReached
from fluxserve.api.auth import openai_auth
from fluxserve.api.common import idempotency_claim, idempotency_key_header, image_size, load_inputs, load_mask
from fluxserve.api.errors import NESTED_TOO_DEEPLY, OpenAIError, first_error
from fluxserve.api.loras import lora_pairs
from fluxserve.api.openai_render import (
    APPROXIMATION_HEADER,
    Finish,
    approximation_headers,
    check_gpt_image_options,
    default_response_format,
    input_limits,
    quality_steps,
    render,
)
from fluxserve.api.openai_schemas import (
    DEFAULT_MODEL,
    EditJSON,
    EditMultipart,
    ImageOptions,
    ImagesResponse,
    ModelList,
    ModelObject,
    request_body,
)
from fluxserve.api.openai_stream import stream_events
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.embedded.grammar import fit
from fluxserve.images import InputImageError
from fluxserve.jobs import Job, QueueFull
from fluxserve.spec import MAX_EDIT_IMAGES, SpecError, SpecOptions, check_input_count, check_options
from fluxserve.stores import IdempotencyConflict

router = APIRouter(tags=["OpenAI Images API"])
IMAGE_FIELDS = ("image", "image[]")
MASK_FAMILIES = ("kontext",)
"""Catalog families whose edits take a mask (FLUX.1 Kontext inpainting; FLUX.2 has none)."""


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
    unavailable = state.catalog.unavailable(model_id)
    if unavailable is not None:  # refused before any work; the other models serve
        raise OpenAIError(
            503,
            f"{unavailable}. Fix its checkpoint setting and restart the server.",
            type="server_error",
            param="model",
            code="model_unavailable",
        )
    return entry


def _options(opts: ImageOptions, entry: ModelEntry) -> SpecOptions:
    """OpenAI field names → the spec builder's (OpenAI's default output format is PNG)."""
    return SpecOptions(
        prompt=opts.prompt,
        protocol="openai",
        width=opts.width,
        height=opts.height,
        aspect_ratio=opts.aspect_ratio,
        size=opts.size,
        seed=opts.seed,
        steps=opts.steps if opts.steps is not None else quality_steps(opts.quality, entry.steps),
        guidance=opts.guidance,
        output_format=opts.output_format or "png",
        output_compression=opts.output_compression,
        safety_tolerance=opts.safety_tolerance,
        prompt_upsampling=opts.prompt_upsampling,
        num_images=opts.n or 1,
        response_format=opts.response_format or default_response_format(entry.id),
        user=opts.user,
        partial_images=(opts.partial_images or 0) if opts.stream else 0,
        loras=lora_pairs(opts.loras),
    )


def _spec_error(exc: SpecError | InputImageError, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, exc.message, param=exc.param, code=code)


async def _run(
    request: Request,
    response: Response,
    state: AppState,
    opts: ImageOptions,
    refs: list[tuple[str, str | bytes]],
    owner: str | None,
    kind: str,
    payload: Any,
    mask_ref: tuple[str, str | bytes] | None = None,
) -> Any:
    """Check, submit, then wait for (or stream) the job and render it."""
    entry = _entry(state, opts.model)
    if mask_ref is not None and entry.family not in MASK_FAMILIES:
        raise OpenAIError(
            400,
            f"model '{entry.id}' cannot take a mask (it has no inpainting); leave 'mask' out, or use "
            "a FLUX.1 Kontext model such as flux-kontext-pro",
            param="mask",
        )
    if refs and not entry.takes_images:
        raise OpenAIError(
            400,
            f"model '{entry.id}' does not take input images; use a Kontext model such as flux-kontext-pro",
            param="model",
        )
    check_gpt_image_options(entry.id, opts, len(refs))
    options = _options(opts, entry)
    try:
        checked = check_options(entry, options, state.loras.names())  # before any fetch
        check_input_count(entry, len(refs), "image")  # the model's limit, before any fetch
        inputs = await load_inputs(refs, input_limits(state.limits, entry.id, opts.input_fidelity))
        spec = checked.build([image_size(i) for i in inputs])  # the request's one spec
        mask = await load_mask(mask_ref, image_size(inputs[0]), state.limits) if mask_ref else None
        digests = [hashlib.sha256(i).hexdigest() for i in [*inputs, *([mask] if mask else [])]]
        claim = idempotency_claim(request, [payload, digests])
    except InputImageError as exc:
        raise _spec_error(exc, "invalid_image") from exc
    except SpecError as exc:
        raise _spec_error(exc) from exc
    try:
        job = await state.service.submit(spec, inputs, owner, claim, state.base_url(request), mask)
    except IdempotencyConflict as exc:
        raise OpenAIError(
            409,
            "This Idempotency-Key was already used with a different request body; use a new "
            "key for a new request.",
            param="Idempotency-Key",
            code="idempotency_conflict",
        ) from exc
    except QueueFull as exc:
        raise OpenAIError(
            429,
            f"The server is busy: {exc}.",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except InsufficientCredits as exc:
        raise OpenAIError(
            402,
            f"You exceeded your current quota: {exc}. Top up the account's credits.",
            type="insufficient_quota",
            code="insufficient_quota",
        ) from exc
    except LimitReached as exc:
        raise OpenAIError(
            429,
            f"Rate limit reached: {exc}.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    if opts.stream:
        # Sent before the image exists: the note the embedded model's engine will record, from
        # the same function (the prompt is final once submitted).
        note = None
        if entry.id in state.service.scene_models:
            note = fit(job.spec.prompt, editing=bool(refs)).note
        return StreamingResponse(
            stream_events(request, state, job.id, kind, Finish.of(opts)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **approximation_headers(note)},
        )
    done = await _wait_or_cancel(request, state, job)
    rendered = render(request, state, done, Finish.of(opts))
    response.headers.update(approximation_headers((done.details or {}).get("approximation")))
    return rendered


async def _wait_or_cancel(request: Request, state: AppState, job: Job) -> Job:
    """Wait for the job; if the client goes away first, cancel it (nobody wants it now)."""
    deadline = time.monotonic() + state.settings.sync_timeout_s
    while True:
        current = await state.service.wait(job.id, min(0.25, max(0.0, deadline - time.monotonic())))
        if current is None:  # swept meanwhile: only with a retention shorter than the wait
            raise OpenAIError(410, f"job {job.id} was deleted before it could be answered", code="gone")
        if current.terminal or time.monotonic() >= deadline:
            return current
        if await request.is_disconnected():
            return state.service.cancel(job.id, job.owner) or current


def _validation_to_openai(exc: ValidationError) -> OpenAIError:
    param, message = first_error(exc.errors())
    return OpenAIError(400, message, param=param, code="invalid_value")


APPROXIMATION_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            APPROXIMATION_HEADER: {
                "description": "Set when the embedded demo model drew only an approximation of the "
                "prompt (one outside what it can draw): that sentence, in ASCII.",
                "schema": {"type": "string"},
            }
        }
    }
}


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=APPROXIMATION_DOC,
    dependencies=[Depends(idempotency_key_header)],
)
async def create_image(
    body: ImageOptions,
    request: Request,
    response: Response,
    owner: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> Any:
    """Generate images (OpenAI ``images.generate``)."""
    payload = body.model_dump(mode="json")
    return await _run(request, response, state, body, [], owner, "image_generation", payload)


EditParts = tuple[dict[str, Any], list[tuple[str, str | bytes]], tuple[str, str | bytes] | None]
"""An edit request's fields, its images and its mask, if any."""


async def _multipart_edit(request: Request, state: AppState) -> EditParts:
    # One file more than any model takes, so that the count check can name the model's limit.
    form = await request.form(max_files=MAX_EDIT_IMAGES + 1, max_fields=64)
    fields: dict[str, Any] = {}
    refs: list[tuple[str, str | bytes]] = []
    mask: tuple[str, str | bytes] | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name == "mask" and mask is None:
                mask = ("mask", await value.read(state.limits.max_bytes + 1))
                continue
            if name not in IMAGE_FIELDS:
                raise OpenAIError(
                    400,
                    f"'{name[:40]}' is not supported: send images as 'image' (or 'image[]') and at "
                    "most one 'mask'.",
                    param=name[:40],
                    code="unsupported",
                )
            data = await value.read(state.limits.max_bytes + 1)
            refs.append((f"image[{len(refs)}]", data))
        else:
            fields[name] = value
    if "extra_body" in fields:  # a raw caller may send the nested object as JSON text
        try:
            fields["extra_body"] = json.loads(fields["extra_body"])
        except RecursionError as exc:
            raise OpenAIError(400, f"extra_body {NESTED_TOO_DEEPLY}", param="extra_body") from exc
        except ValueError as exc:
            raise OpenAIError(400, "extra_body must be a JSON object", param="extra_body") from exc
        if not isinstance(fields["extra_body"], dict):
            raise OpenAIError(400, "extra_body must be a JSON object", param="extra_body")
    return fields, refs, mask


async def _json_edit(request: Request) -> EditParts:
    try:
        fields = await request.json()
    except RecursionError as exc:
        raise OpenAIError(400, f"The body {NESTED_TOO_DEEPLY}", code="invalid_json") from exc
    except ValueError as exc:
        raise OpenAIError(400, "The body is not valid JSON", code="invalid_json") from exc
    if not isinstance(fields, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    mask: tuple[str, str | bytes] | None = None
    if fields.get("mask") is not None:
        if not isinstance(fields["mask"], dict) or not isinstance(fields["mask"].get("image_url"), str):
            raise OpenAIError(
                400, "'mask' needs an 'image_url' (URL or data URL); file_id is not supported", param="mask"
            )
        mask = ("mask", fields["mask"]["image_url"])
    images = fields.get("images")
    if not isinstance(images, list) or not images:
        raise OpenAIError(400, "'images' must be a list of {\"image_url\": ...} objects", param="images")
    for i, item in enumerate(images):
        if not isinstance(item, dict) or not isinstance(item.get("image_url"), str):
            raise OpenAIError(
                400,
                "each entry of 'images' needs an 'image_url' (URL or data URL); file_id is not supported",
                param=f"images[{i}]",
            )
    refs = [(f"images[{i}]", item["image_url"]) for i, item in enumerate(images)]
    return {k: v for k, v in fields.items() if k not in ("images", "mask")}, refs, mask


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    openapi_extra=request_body({"multipart/form-data": EditMultipart, "application/json": EditJSON}),
    responses=APPROXIMATION_DOC,
    dependencies=[Depends(idempotency_key_header)],
)
async def edit_image(
    request: Request,
    response: Response,
    owner: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> Any:
    """Edit images with a Kontext model (OpenAI ``images.edit``): multipart or JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        fields, refs, mask = await _multipart_edit(request, state)
    elif ctype.startswith("application/json"):
        fields, refs, mask = await _json_edit(request)
    else:
        raise OpenAIError(400, "send multipart/form-data (image=...) or JSON (images=[...])")
    if not refs:
        raise OpenAIError(400, "at least one image is required", param="image")
    try:
        opts = ImageOptions.model_validate(fields)
    except ValidationError as exc:
        raise _validation_to_openai(exc) from exc
    # The idempotency digest covers the validated options (as for generations), not the raw
    # fields: unknown keys neither change it nor reach the digest (however deeply nested).
    payload = opts.model_dump(mode="json")
    return await _run(request, response, state, opts, refs, owner, "image_edit", payload, mask)


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    owner: str | None = Depends(openai_auth),
    state: AppState = Depends(get_state),
) -> ModelList:
    """The catalog, in OpenAI's list format."""
    created = int(time.time())
    return ModelList(
        data=[ModelObject(id=e.id, created=created, owned_by="fluxserve") for e in state.catalog]
    )
