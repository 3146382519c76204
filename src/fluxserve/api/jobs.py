"""Job routes beyond the two protocols: the caller's job list, live events (SSE), webhook
attempts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fluxserve.api.auth import bfl_auth
from fluxserve.api.bfl import render_result
from fluxserve.api.bfl_schemas import BFLStatus, ResultResponse
from fluxserve.api.common import sse_frame
from fluxserve.api.state import AppState, get_state
from fluxserve.jobs import Job, JobStatus

router = APIRouter(tags=["Jobs"])
# Job ids are UUIDs; the bound matches get_result's ``id`` (longer ids are 422, not a lookup).
JobId = Annotated[str, Path(max_length=100, description="The id returned on submission.")]
END_ID = "end"
KEEPALIVE_S = 15.0
MAX_PAGE = 100


class JobSummary(BaseModel):
    """One job of ``GET /v1/jobs``: what was asked (enough to make the same request again),
    and what ``get_result`` answers about it."""

    id: str
    status: BFLStatus
    model: str
    protocol: str
    """The API it came by: ``bfl`` or ``openai``."""
    prompt: str
    """The prompt that ran (rewritten when prompt upsampling was on)."""
    original_prompt: str | None
    """The caller's prompt, when prompt upsampling rewrote it."""
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    output_format: str
    safety_tolerance: int
    prompt_upsampling: bool
    num_images: int
    input_images: int
    """How many input images the request had (edits)."""
    loras: list[dict[str, Any]]
    """LoRA adapters applied: ``{"name", "scale"}`` each."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    cost: float | None
    """USD at the model's price on this server (per image, or per megapixel for FLUX.2)."""
    progress: float | None
    result: Any | None
    """As ``get_result``'s: freshly signed ``sample`` (and ``samples``), timings."""
    details: dict[str, Any] | None


class JobList(BaseModel):
    """A page of the caller's jobs, newest first."""

    data: list[JobSummary]
    next_before: float | None
    """Pass as ``before`` for the next (older) page; None on the last page."""


def _summary(state: AppState, job: Job, base_url: str) -> JobSummary:
    spec = job.spec
    rendered = render_result(state, job, base_url)
    entry = state.catalog.get(spec.model)
    return JobSummary(
        id=job.id,
        status=rendered.status,
        model=spec.model,
        protocol=spec.protocol,
        prompt=spec.prompt,
        original_prompt=spec.original_prompt,
        width=spec.width,
        height=spec.height,
        seed=spec.seed,
        steps=spec.steps,
        guidance=spec.guidance,
        output_format=spec.output_format,
        safety_tolerance=spec.safety_tolerance,
        prompt_upsampling=spec.prompt_upsampling,
        num_images=spec.num_images,
        input_images=len(spec.input_images),
        loras=[{"name": r.name, "scale": r.scale} for r in spec.loras],
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cost=entry.cost(spec).usd if entry is not None else None,
        progress=rendered.progress,
        result=rendered.result,
        details=rendered.details,
    )


@router.get("/v1/jobs", response_model=JobList)
async def list_jobs(
    request: Request,
    limit: int = Query(default=20, ge=1, le=MAX_PAGE, description="Jobs per page."),
    before: float | None = Query(
        default=None, ge=0, le=1e11, description="Only jobs created before this (``next_before``)."
    ),
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> JobList:
    """The caller's jobs, newest first, a page at a time: those made with this key, or with
    any key of its account for a named account (accounts share their jobs)."""
    owners: list[str | None] = [owner]
    if state.accounting is not None and owner is not None:
        grant = state.accounting.grant(owner)
        if grant.shared:
            owners = list(dict.fromkeys([owner, *state.accounting.store.keys_of(grant.account)]))
    found = [job for o in owners for job in state.service.store.list_owned(o, limit, before)]
    jobs = sorted(found, key=lambda job: job.created_at, reverse=True)[:limit]
    base_url = state.base_url(request)
    return JobList(
        data=[_summary(state, job, base_url) for job in jobs],
        next_before=jobs[-1].created_at if len(jobs) == limit else None,
    )


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    job_id: JobId,
    request: Request,
    last_event_id: str | None = Header(
        default=None,
        alias="Last-Event-ID",
        description="Resume after this event id (sent by EventSource on reconnect); anything "
        "but an id this stream sent replays from the start.",
    ),
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> Any:
    """Server-sent events: ``queued`` (position), ``progress`` (step, steps, fraction),
    ``preview`` (a small base64 JPEG of the current estimate, every few steps), then exactly
    one terminal event, ``result``, carrying what ``get_result`` would answer (event id
    ``end``). Reconnect with ``Last-Event-ID`` to resume; after ``end`` the answer is 204."""
    last = (last_event_id or "").strip()
    if last == END_ID:
        return Response(status_code=204)
    if state.service.get(job_id, owner) is None:
        raise HTTPException(404, "Task not found")
    # Event ids are small counters; anything else (garbage, huge numbers) replays from the start.
    after = int(last) if last.isascii() and last.isdigit() and len(last) <= 9 else 0
    base_url = state.base_url(request)

    async def stream() -> AsyncIterator[bytes]:
        events = state.service.events.subscribe(job_id, after)
        job = state.service.store.get(job_id)
        if job is not None and job.status == JobStatus.QUEUED:
            pos = state.service.queue.position(job_id)
            yield sse_frame("queued", {"position": pos})
        if job is not None and not job.terminal:
            it = events.__aiter__()
            while True:
                try:
                    event = await asyncio.wait_for(it.__anext__(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    job = state.service.store.get(job_id)
                    if job is None or job.terminal:
                        break
                    yield b": keep-alive\n\n"
                    continue
                except StopAsyncIteration:
                    break
                if event.type == "end":
                    break
                if event.type in ("progress", "preview"):
                    yield sse_frame(event.type, event.data, event.id)
            await it.aclose()  # type: ignore[attr-defined]
        else:
            await events.aclose()  # type: ignore[attr-defined]
        job = state.service.store.get(job_id)
        if job is not None:
            yield sse_frame("result", render_result(state, job, base_url).model_dump(), END_ID)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class WebhookAttempt(BaseModel):
    """One delivery attempt."""

    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_s: float | None


class WebhookDeliveries(BaseModel):
    """A job's webhook delivery and its attempts."""

    job_id: str
    delivery_id: str | None
    """Sent as ``X-Fluxserve-Delivery`` with every attempt: de-duplicate by it."""
    url: str | None
    state: str | None
    """waiting (job not ended), pending, sending, delivered, failed; None without a webhook."""
    attempts: list[WebhookAttempt]
    next_attempt_at: float | None


@router.get("/v1/jobs/{job_id}/webhooks", response_model=WebhookDeliveries)
async def job_webhooks(
    job_id: JobId,
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> WebhookDeliveries:
    """The webhook delivery of a job and every attempt (status code, time, error)."""
    if state.service.get(job_id, owner) is None:
        raise HTTPException(404, "Task not found")
    delivery, attempts = state.service.webhooks.attempts(job_id)
    return WebhookDeliveries(
        job_id=job_id,
        delivery_id=delivery.id if delivery else None,
        url=delivery.url if delivery else None,
        state=delivery.state if delivery else None,
        attempts=[WebhookAttempt(**asdict(a)) for a in attempts],
        next_attempt_at=delivery.next_at if delivery and delivery.state == "pending" else None,
    )


async def _cancel(job_id: str, owner: str | None, request: Request, state: AppState) -> ResultResponse:
    job = state.service.get(job_id, owner)
    if job is None:
        raise HTTPException(404, "Task not found")
    if job.terminal:
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    job = state.service.cancel(job_id, owner) or job
    return render_result(state, job, state.base_url(request))


@router.delete("/v1/jobs/{job_id}", response_model=ResultResponse)
async def delete_job(
    job_id: JobId,
    request: Request,
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> ResultResponse:
    """Cancel a job: a queued job never runs; a running one stops at its next denoising step.
    ``get_result`` then answers ``Error`` with ``details.error == "cancelled"``."""
    return await _cancel(job_id, owner, request, state)


@router.post("/v1/jobs/{job_id}/cancel", response_model=ResultResponse)
async def cancel_job(
    job_id: JobId,
    request: Request,
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> ResultResponse:
    """The same as ``DELETE /v1/jobs/{id}``."""
    return await _cancel(job_id, owner, request, state)
