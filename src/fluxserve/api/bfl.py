"""The Black Forest Labs async API: ``POST /v1/{model}`` → ``{id, polling_url}``, then
``GET /v1/get_result?id=``. One typed route per catalog model, so the OpenAPI document (which
FastAPI generates) shows each model's own fields and defaults."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fluxserve.api.common import default_size, image_size, load_inputs, size_from_image
from fluxserve.api.errors import bfl_validation_error
from fluxserve.api.state import AppState, check_key, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.images import InputImageError
from fluxserve.jobs import Job, JobStatus
from fluxserve.jobs.idempotency import IdempotencyConflict, body_hash
from fluxserve.jobs.service import new_seed
from fluxserve.netguard import UrlRefused, check_url
from fluxserve.spec import GenerationSpec, SpecError, aspect_to_size, parse_aspect_ratio

BFLStatus = Literal["Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"]
STATUS_TEXT: dict[JobStatus, str] = {
    JobStatus.QUEUED: "Pending",
    JobStatus.RUNNING: "Pending",
    JobStatus.READY: "Ready",
    JobStatus.ERROR: "Error",
    JobStatus.REQUEST_MODERATED: "Request Moderated",
    JobStatus.CONTENT_MODERATED: "Content Moderated",
}


def bfl_auth(request: Request) -> str | None:
    allowed, key_id = check_key(request)
    if not allowed:
        raise HTTPException(
            401,
            "Invalid or missing API key: send it in the 'x-key' header "
            "(create one with: fluxserve keys create).",
        )
    return key_id


def _check_ratio(v: str | None) -> str | None:
    if v is not None:
        parse_aspect_ratio(v)
    return v


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 16, description="Optional seed for reproducibility."
    )
    prompt_upsampling: bool = Field(
        default=False, description="Rewrite the prompt with more detail before generation."
    )
    safety_tolerance: int = Field(default=2, ge=0, le=6, description="0 (most strict) to 6 (least strict).")
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2083)
    webhook_secret: str | None = None
    steps: int | None = Field(
        default=None, ge=1, le=50, description="Denoising steps (default: the model's)."
    )
    guidance: float | None = Field(
        default=None, ge=1.5, le=5.0, description="Guidance (default: the model's)."
    )


class FluxKontextInputs(_Common):
    prompt: str = Field(description="Text prompt for image generation.")
    input_image: str | None = Field(default=None, description="Base64, data URL or http(s) URL.")
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: str | None = Field(default=None, description="Between 21:9 and 9:21 (3:7 to 7:3).")
    output_format: Literal["jpeg", "png", "webp"] | None = "png"

    _ratio = field_validator("aspect_ratio")(_check_ratio)


class FluxProInputs(_Common):
    prompt: str | None = ""
    image_prompt: str | None = None
    width: int = Field(default=1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(default=768, ge=256, le=1440, multiple_of=32)
    output_format: Literal["jpeg", "png", "webp"] | None = "jpeg"


class FluxUltraInputs(_Common):
    prompt: str | None = ""
    aspect_ratio: str = Field(default="16:9", description="Between 21:9 and 9:21 (3:7 to 7:3).")
    raw: bool = False
    image_prompt: str | None = None
    image_prompt_strength: float = Field(default=0.1, ge=0.0, le=1.0)
    output_format: Literal["jpeg", "png", "webp"] | None = "jpeg"

    _ratio = field_validator("aspect_ratio")(_check_ratio)


INPUTS: dict[str, type[_Common]] = {
    "kontext": FluxKontextInputs,
    "pro": FluxProInputs,
    "ultra": FluxUltraInputs,
}


class AsyncResponse(BaseModel):
    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


class ResultResponse(BaseModel):
    id: str
    status: BFLStatus
    result: Any | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None


async def _submit(
    entry: ModelEntry,
    body: _Common,
    request: Request,
    state: AppState,
    key_id: str | None,
) -> AsyncResponse | JSONResponse:
    idem_key = request.headers.get("idempotency-key")
    if not idem_key:
        return await _submit_new(entry, body, request, state, key_id)
    owner = key_id or ""
    digest = body_hash(request.url.path, body.model_dump(mode="json"))
    try:
        existing = await state.idempotency.claim(idem_key, owner, digest)
    except IdempotencyConflict:
        return JSONResponse(
            status_code=422,
            content={
                "detail": [
                    {
                        "loc": ["header", "Idempotency-Key"],
                        "type": "idempotency_conflict",
                        "msg": "this Idempotency-Key was already used with a different "
                        "request body; use a new key for a new request",
                    }
                ]
            },
        )
    if existing:
        job = state.service.get(existing)
        if job is not None:
            return _async_response(job, entry, request, state)
    try:
        response = await _submit_new(entry, body, request, state, key_id)
    except BaseException:
        state.idempotency.release(idem_key, owner)
        raise
    if isinstance(response, AsyncResponse):
        state.idempotency.bind(idem_key, owner, response.id)
    else:
        state.idempotency.release(idem_key, owner)
    return response


def _async_response(job: Job, entry: ModelEntry, request: Request, state: AppState) -> AsyncResponse:
    spec = job.spec
    n_inputs = len(spec.input_images)
    return AsyncResponse(
        id=job.id,
        polling_url=f"{state.base_url(request)}/v1/get_result?id={job.id}",
        cost=round(entry.price * 100, 4),  # BFL reports credits; 1 credit = 0.01 USD
        input_mp=spec.extras.get("input_mp") if n_inputs else None,
        output_mp=round(spec.width * spec.height / 1e6, 3),
    )


async def _submit_new(
    entry: ModelEntry,
    body: _Common,
    request: Request,
    state: AppState,
    key_id: str | None,
) -> AsyncResponse | JSONResponse:
    if body.webhook_url:
        try:
            await check_url(body.webhook_url, state.settings.allow_private_urls)
        except UrlRefused as exc:
            return bfl_validation_error(["body", "webhook_url"], str(exc))
    if getattr(body, "image_prompt", None):
        return bfl_validation_error(
            ["body", "image_prompt"],
            "image_prompt (Redux) is not supported by this server; "
            "use a Kontext model with input_image instead",
        )
    if getattr(body, "raw", False):
        return bfl_validation_error(["body", "raw"], "raw mode is not supported by this server")
    refs: list[tuple[str, str | bytes]] = []
    if isinstance(body, FluxKontextInputs):
        for name in ("input_image", "input_image_2", "input_image_3", "input_image_4"):
            value = getattr(body, name)
            if value:
                refs.append((name, value))
    try:
        inputs = await load_inputs(refs, state.limits)
    except (SpecError, InputImageError) as exc:
        return bfl_validation_error(["body", exc.param or "input_image"], exc.message)

    if isinstance(body, FluxProInputs):
        width, height = body.width, body.height
    elif getattr(body, "aspect_ratio", None):
        width, height = aspect_to_size(parse_aspect_ratio(body.aspect_ratio), entry.area)  # type: ignore[attr-defined]
    elif inputs:
        width, height = size_from_image(entry, image_size(inputs[0]))
    else:
        width, height = default_size(entry)

    spec = GenerationSpec(
        model=entry.id,
        prompt=getattr(body, "prompt", None) or "",
        width=width,
        height=height,
        seed=body.seed if body.seed is not None else new_seed(),
        steps=body.steps or entry.steps,
        guidance=body.guidance if body.guidance is not None else entry.guidance,
        output_format=getattr(body, "output_format", None) or entry.default_output_format,
        safety_tolerance=body.safety_tolerance,
        prompt_upsampling=body.prompt_upsampling,
        webhook_url=body.webhook_url,
        webhook_secret=body.webhook_secret,
        protocol="bfl",
        extras={
            "base_url": state.base_url(request),
            "input_mp": round(sum(image_size(i)[0] * image_size(i)[1] for i in inputs) / 1e6, 3),
        },
    )
    job = await state.service.submit(spec, inputs, api_key_id=key_id)
    return _async_response(job, entry, request, state)


def make_router(models: list[ModelEntry]) -> APIRouter:
    router = APIRouter(tags=["BFL API"])

    for entry in models:
        if not entry.bfl_route:
            continue
        inputs_cls = INPUTS[entry.family]

        def endpoint_for(entry: ModelEntry, inputs_cls: type[_Common]):  # type: ignore[no-untyped-def]
            async def endpoint(
                body: inputs_cls,  # type: ignore[valid-type]
                request: Request,
                key_id: str | None = Depends(bfl_auth),
                state: AppState = Depends(get_state),
            ) -> AsyncResponse | JSONResponse:
                current = state.catalog.get(entry.id) or entry
                return await _submit(current, body, request, state, key_id)

            # The body type is chosen per model at runtime; give FastAPI the class itself.
            endpoint.__annotations__["body"] = inputs_cls
            return endpoint

        router.add_api_route(
            f"/v1/{entry.id}",
            endpoint_for(entry, inputs_cls),
            methods=["POST"],
            response_model=AsyncResponse,
            summary=f"Generate an image with {entry.id}",
            operation_id=f"generate_{entry.id.replace('-', '_').replace('.', '_')}",
        )

    known = ", ".join(e.id for e in models if e.bfl_route)

    @router.post("/v1/{model}", include_in_schema=False)
    async def unknown_model(model: str, key_id: str | None = Depends(bfl_auth)) -> None:
        """After the per-model routes: a model id this server does not have."""
        raise HTTPException(404, f"model '{model}' is not served here; available: {known}")

    @router.get("/v1/get_result", response_model=ResultResponse)
    async def get_result(
        request: Request,
        id: str = Query(..., description="The id returned on submission."),
        key_id: str | None = Depends(bfl_auth),
        state: AppState = Depends(get_state),
    ) -> ResultResponse:
        """A job's status, and when Ready its result with a freshly signed ``sample`` URL."""
        job = state.service.get(id)
        if job is None:
            return ResultResponse(id=id, status="Task not found")
        return render_result(state, job, state.base_url(request))

    return router


def render_result(state: AppState, job: Job, base_url: str) -> ResultResponse:
    """get_result's answer for a job; ``sample`` URLs are signed afresh on every call."""
    result: dict[str, Any] | None = None
    if job.status == JobStatus.READY and job.result:
        urls = [state.file_url(base_url, key) for key in job.result["files"]]
        result = {
            "sample": urls[0],
            "prompt": job.result["prompt"],
            "seed": job.result["seed"],
            "start_time": job.started_at,
            "end_time": job.finished_at,
            "duration": round((job.finished_at or 0) - (job.started_at or 0), 4),
            # fluxserve extension: where the time went.
            "timings": {
                "queue_s": round((job.started_at or 0) - job.created_at, 4),
                "engine_s": job.result.get("engine_s"),
                "encode_s": job.result.get("encode_s"),
            },
        }
        if len(urls) > 1:
            result["samples"] = urls
    return ResultResponse(
        id=job.id,
        status=STATUS_TEXT[job.status],  # type: ignore[arg-type]
        result=result,
        progress=job.progress,
        details=job.details,
    )
