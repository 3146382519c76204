"""The Black Forest Labs async API: ``POST /v1/{model}`` → ``{id, polling_url}``, then
``GET /v1/get_result?id=``. One typed route per catalog model, so the OpenAPI document (which
FastAPI generates) shows each model's own fields and defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from fluxserve.accounts import InsufficientCredits, LimitReached
from fluxserve.api.auth import bfl_auth
from fluxserve.api.bfl_schemas import (
    INPUTS,
    INPUTS_BY_MODEL,
    AsyncResponse,
    CommonInputs,
    Flux2Common,
    FluxKontextInputs,
    FluxProInputs,
    ResultResponse,
)
from fluxserve.api.common import idempotency_claim, idempotency_key_header, image_size, load_inputs
from fluxserve.api.errors import bfl_validation_error
from fluxserve.api.loras import lora_pairs
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.images import InputImageError
from fluxserve.jobs import Job, JobStatus, QueueFull
from fluxserve.netguard import UrlRefused, check_url
from fluxserve.spec import SpecError, SpecOptions, check_input_count, check_options
from fluxserve.stores import IdempotencyConflict

STATUS_TEXT: dict[JobStatus, str] = {
    JobStatus.QUEUED: "Pending",
    JobStatus.RUNNING: "Pending",
    JobStatus.READY: "Ready",
    JobStatus.ERROR: "Error",
    JobStatus.REQUEST_MODERATED: "Request Moderated",
    JobStatus.CONTENT_MODERATED: "Content Moderated",
}
IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")
Inputs = CommonInputs | Flux2Common
"""A BFL request body: FLUX.1 routes (:class:`CommonInputs`) or FLUX.2 routes."""


def _options(body: Inputs) -> SpecOptions:
    """BFL field names → the spec builder's."""
    pro = body if isinstance(body, FluxProInputs | Flux2Common) else None
    return SpecOptions(
        prompt=getattr(body, "prompt", None) or "",
        protocol="bfl",
        width=pro.width if pro else None,
        height=pro.height if pro else None,
        aspect_ratio=getattr(body, "aspect_ratio", None),
        seed=body.seed,
        steps=getattr(body, "steps", None),
        guidance=getattr(body, "guidance", None),
        output_format=getattr(body, "output_format", None),
        safety_tolerance=body.safety_tolerance,
        prompt_upsampling=body.upsampling() if isinstance(body, Flux2Common) else body.prompt_upsampling,
        webhook_url=body.webhook_url,
        webhook_secret=body.webhook_secret,
        loras=lora_pairs(body.loras),
    )


async def submit(
    entry: ModelEntry, body: Inputs, request: Request, state: AppState, owner: str | None
) -> AsyncResponse | JSONResponse:
    """Check a BFL request and submit it as a job: the async answer, or a BFL-shaped error."""
    unavailable = state.catalog.unavailable(entry.id)
    if unavailable is not None:  # refused before any work; the other models serve
        raise HTTPException(503, f"{unavailable}. Fix its checkpoint setting and restart the server.")
    if getattr(body, "image_prompt", None):
        return bfl_validation_error(
            ["body", "image_prompt"],
            "image_prompt (Redux) is not supported by this server; "
            "use a Kontext model with input_image instead",
        )
    if getattr(body, "raw", False):
        return bfl_validation_error(["body", "raw"], "raw mode is not supported by this server")
    try:
        claim = idempotency_claim(request, body.model_dump(mode="json"))
        checked = check_options(entry, _options(body), state.loras.names())  # before any fetch
        if body.webhook_url:
            await check_url(body.webhook_url, state.settings.allow_private_urls)
        refs: list[tuple[str, str | bytes]] = []
        if isinstance(body, FluxKontextInputs):
            refs = [(name, value) for name in IMAGE_FIELDS if (value := getattr(body, name))]
        elif isinstance(body, Flux2Common):
            refs = list(body.references())
        check_input_count(entry, len(refs), refs[-1][0] if refs else None)  # before any fetch
        inputs = await load_inputs(refs, state.limits)
        spec = checked.build([image_size(i) for i in inputs])  # the request's one spec
    except UrlRefused as exc:
        return bfl_validation_error(["body", "webhook_url"], str(exc))
    except (SpecError, InputImageError) as exc:
        where = "header" if exc.param == "Idempotency-Key" else "body"
        return bfl_validation_error([where, exc.param or "input_image"], exc.message)
    try:
        job = await state.service.submit(spec, inputs, owner, claim, state.base_url(request))
    except IdempotencyConflict:
        return bfl_validation_error(
            ["header", "Idempotency-Key"],
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a new request",
            "idempotency_conflict",
        )
    except QueueFull as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc
    except InsufficientCredits as exc:
        raise HTTPException(402, f"Insufficient credits: {exc}.") from exc
    except LimitReached as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc
    return _async_response(job, entry, request, state)


def _async_response(job: Job, entry: ModelEntry, request: Request, state: AppState) -> AsyncResponse:
    spec = job.spec
    cost = entry.cost(spec)  # per image, or per megapixel (FLUX.2) as BFL prices them
    return AsyncResponse(
        id=job.id,
        polling_url=f"{state.base_url(request)}/v1/get_result?id={job.id}",
        cost=cost.credits,  # BFL reports credits; 1 credit = 0.01 USD
        input_mp=cost.input_mp if spec.input_images else None,
        output_mp=cost.output_mp,
    )


Prepare = Callable[[Any, AppState], JSONResponse | None]
"""A route's own step before submission: adjust the body, or return an error to answer."""


def add_model_route(
    router: APIRouter,
    path: str,
    entry: ModelEntry,
    inputs_cls: type[Inputs],
    summary: str,
    operation_id: str,
    prepare: Prepare | None = None,
) -> None:
    """``POST path`` for one catalog model: the body validated as ``inputs_cls``, then
    ``prepare`` (if any), then :func:`submit` with the model's current catalog entry."""

    async def endpoint(
        body: Any,
        request: Request,
        owner: str | None = Depends(bfl_auth),
        state: AppState = Depends(get_state),
    ) -> AsyncResponse | JSONResponse:
        if prepare is not None and (refused := prepare(body, state)) is not None:
            return refused
        return await submit(state.catalog.get(entry.id) or entry, body, request, state, owner)

    # The body type is chosen per model at runtime; give FastAPI the class itself.
    endpoint.__annotations__["body"] = inputs_cls
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        response_model=AsyncResponse,
        summary=summary,
        operation_id=operation_id,
        dependencies=[Depends(idempotency_key_header)],
    )


def make_router(models: list[ModelEntry]) -> APIRouter:
    """The BFL routes: one ``POST /v1/{id}`` per catalog model, then ``get_result``."""
    router = APIRouter(tags=["BFL API"])

    for entry in models:
        if not entry.bfl_route:
            continue
        add_model_route(
            router,
            f"/v1/{entry.id}",
            entry,
            INPUTS_BY_MODEL.get(entry.id) or INPUTS[entry.family],
            summary=f"Generate an image with {entry.id}",
            operation_id=f"generate_{entry.id.replace('-', '_').replace('.', '_')}",
        )

    known = ", ".join(e.id for e in models if e.bfl_route)

    @router.post("/v1/{model}", include_in_schema=False)
    async def unknown_model(model: str, owner: str | None = Depends(bfl_auth)) -> None:
        """After the per-model routes: a model id this server does not have."""
        raise HTTPException(404, f"model '{model[:100]}' is not served here; available: {known}")

    @router.get("/v1/get_result", response_model=ResultResponse)
    async def get_result(
        request: Request,
        id: str = Query(..., max_length=100, description="The id returned on submission."),
        owner: str | None = Depends(bfl_auth),
        state: AppState = Depends(get_state),
    ) -> ResultResponse:
        """A job's status, and when Ready its result with a freshly signed ``sample`` URL.
        A job made with another key is ``Task not found``, as is an unknown id."""
        job = state.service.get(id, owner)
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
        if "batch" in job.result:  # fluxserve extension: it ran in one pipeline call with others
            result["batch"] = job.result["batch"]
    details = job.details
    if job.routing is not None:  # fluxserve extension: where an overflow model's job runs, and why
        details = {**(details or {}), "served_by": job.routing.get("served_by"), "routing": job.routing}
    return ResultResponse(
        id=job.id,
        status=STATUS_TEXT[job.status],  # type: ignore[arg-type]
        result=result,
        progress=job.progress,
        details=details,
    )
