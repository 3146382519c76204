"""Job routes beyond the two protocols: live events (SSE), webhook attempts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fluxserve.api.bfl import ResultResponse, bfl_auth, render_result
from fluxserve.api.common import sse_frame
from fluxserve.api.state import AppState, get_state
from fluxserve.jobs import JobStatus

router = APIRouter(tags=["Jobs"])
END_ID = "end"
KEEPALIVE_S = 15.0


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    job_id: str,
    request: Request,
    key_id: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> Any:
    """Server-sent events: ``queued`` (position), ``progress`` (step, steps, fraction),
    ``preview`` (a small base64 JPEG of the current estimate, every few steps), then exactly
    one terminal event, ``result``, carrying what ``get_result`` would answer (event id
    ``end``). Reconnect with ``Last-Event-ID`` to resume; after ``end`` the answer is 204."""
    last = request.headers.get("last-event-id", "")
    if last == END_ID:
        return Response(status_code=204)
    if state.service.get(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    after = int(last) if last.isdigit() else 0
    base_url = state.base_url(request)

    async def stream() -> AsyncIterator[bytes]:
        events = state.service.events.subscribe(job_id, after)
        job = state.service.get(job_id)
        if job is not None and job.status == JobStatus.QUEUED:
            pos = state.service.store.queue_position(job_id)
            yield sse_frame("queued", {"position": pos})
        if job is not None and not job.terminal:
            it = events.__aiter__()
            while True:
                try:
                    event = await asyncio.wait_for(it.__anext__(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    job = state.service.get(job_id)
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
        job = state.service.get(job_id)
        if job is not None:
            yield sse_frame("result", render_result(state, job, base_url).model_dump(), END_ID)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class WebhookAttempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_s: float | None


class WebhookDeliveries(BaseModel):
    job_id: str
    url: str | None
    state: str | None  # pending, sending, delivered, failed; None when the job has no webhook
    attempts: list[WebhookAttempt]
    next_attempt_at: float | None


@router.get("/v1/jobs/{job_id}/webhooks", response_model=WebhookDeliveries)
async def job_webhooks(
    job_id: str,
    key_id: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> WebhookDeliveries:
    """The webhook delivery of a job and every attempt (status code, time, error)."""
    if state.service.get(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    assert state.service.webhooks is not None
    delivery, attempts = state.service.webhooks.attempts(job_id)
    return WebhookDeliveries(
        job_id=job_id,
        url=delivery["url"] if delivery else None,
        state=delivery["state"] if delivery else None,
        attempts=[WebhookAttempt(**a) for a in attempts],
        next_attempt_at=delivery["next_at"] if delivery and delivery["state"] == "pending" else None,
    )


async def _cancel(job_id: str, request: Request, state: AppState) -> ResultResponse:
    job = state.service.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.terminal:
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    job = state.service.cancel(job_id)
    assert job is not None
    return render_result(state, job, state.base_url(request))


@router.delete("/v1/jobs/{job_id}", response_model=ResultResponse)
async def delete_job(
    job_id: str,
    request: Request,
    key_id: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> ResultResponse:
    """Cancel a job: a queued job never runs; a running one stops at its next denoising step.
    ``get_result`` then answers ``Error`` with ``details.error == "cancelled"``."""
    return await _cancel(job_id, request, state)


@router.post("/v1/jobs/{job_id}/cancel", response_model=ResultResponse)
async def cancel_job(
    job_id: str,
    request: Request,
    key_id: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> ResultResponse:
    """The same as ``DELETE /v1/jobs/{id}``."""
    return await _cancel(job_id, request, state)
