"""OpenAI image streaming: ``<kind>.partial_image`` events, then ``<kind>.completed`` per image.

``kind`` is ``image_generation`` for ``/v1/images/generations`` and ``image_edit`` for
``/v1/images/edits``, as OpenAI names the events. Every event echoes the request's settings
(``size``, ``quality``, ``background``, ``output_format``); each completed event carries the
job's ``usage``. Partial images are previews of the denoising, shown opaque.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

from fastapi import Request

from fluxserve.api.common import sse_frame
from fluxserve.api.errors import OpenAIError
from fluxserve.api.openai_render import Finish, finished_image, render, usage
from fluxserve.api.state import AppState
from fluxserve.jobs import JobStatus


async def stream_events(
    request: Request, state: AppState, job_id: str, kind: str, finish: Finish | None = None
) -> AsyncIterator[bytes]:
    """The stream of one job (or an ``error`` event). The job is cancelled if the client goes
    away before it ends."""
    finish = finish or Finish()
    service = state.service
    finished = False
    job = service.store.get(job_id)
    if job is None:
        return
    owner = job.owner
    try:
        common = {
            "size": f"{job.spec.width}x{job.spec.height}",
            "quality": finish.quality,
            "background": finish.background,
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
                render(request, state, job, finish)
            except OpenAIError as exc:
                yield sse_frame("error", exc.body)
            return
        job_usage = usage(job).model_dump(exclude_none=True)
        for key in job.result["files"]:
            _, image = finished_image(state, job, key, finish)
            yield sse_frame(
                f"{kind}.completed",
                {
                    "type": f"{kind}.completed",
                    "b64_json": base64.b64encode(image).decode(),
                    "created_at": int(time.time()),
                    "usage": job_usage,
                    **common,
                },
            )
    finally:
        if not finished:
            service.cancel(job_id, owner)
