"""Rendering an ended job as the OpenAI Images API answers: images, or the error it ended with."""

from __future__ import annotations

import base64

from fastapi import Request

from fluxserve.api.errors import OpenAIError
from fluxserve.api.openai_schemas import ImageData, ImagesResponse
from fluxserve.api.state import AppState
from fluxserve.jobs import Job, JobStatus


def render(request: Request, state: AppState, job: Job) -> ImagesResponse:
    """The OpenAI answer for an ended job (or the error it ended with)."""
    if not job.terminal:
        raise OpenAIError(
            504,
            f"Generation is still running after {state.settings.sync_timeout_s:.0f}s. It is job "
            f"{job.id}: poll GET /v1/get_result?id={job.id} for its result.",
            type="server_error",
            code="timeout",
        )
    if job.status in (JobStatus.REQUEST_MODERATED, JobStatus.CONTENT_MODERATED):
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
        if spec.response_format == "b64_json":
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
