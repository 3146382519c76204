"""OpenAI image streaming: ``<kind>.partial_image`` events, then ``<kind>.completed`` per image."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from fluxserve.api.common import sse_frame
from fluxserve.api.errors import OpenAIError
from fluxserve.api.openai_render import render
from fluxserve.api.state import AppState
from fluxserve.jobs import Job, JobStatus


def _usage(job: Job) -> dict[str, Any]:
    text_tokens = len(job.spec.prompt.split())
    return {
        "total_tokens": text_tokens,
        "input_tokens": text_tokens,
        "output_tokens": 0,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
    }


async def stream_events(request: Request, state: AppState, job_id: str, kind: str) -> AsyncIterator[bytes]:
    """The stream of one job (or an ``error`` event). The job is cancelled if the client goes
    away before it ends."""
    service = state.service
    finished = False
    job = service.store.get(job_id)
    if job is None:
        return
    owner = job.owner
    try:
        common = {
            "size": f"{job.spec.width}x{job.spec.height}",
            "quality": "auto",
            "background": "opaque",
            "output_format": job.spec.output_format,
        }
        if not job.terminal:
            async for event in service.events.subscribe(job_id):
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
        job = service.store.get(job_id)
        finished = True
        if job is None:
            return
        if job.status != JobStatus.READY or job.result is None:
            try:
                render(request, state, job)
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
            service.cancel(job_id, owner)
