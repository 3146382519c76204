"""The Black Forest Labs async API: submit a job, poll it until Ready, download the sample.

``POST /v1/{model}`` answers ``{"id", "polling_url"}``; ``GET polling_url`` answers the job's
``status`` and, once it is ``Ready``, ``result.sample``: a URL that may expire within minutes,
so the image is downloaded the moment it is ready.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

from fluxserve.client.errors import GenerationTimeout, ModeratedError, ServerError, raise_for_response
from fluxserve.client.inputs import is_http_url
from fluxserve.client.models import GenerationResult
from fluxserve.client.protocol import GenerationRequest, format_of, idempotency_headers
from fluxserve.client.session import Session

MODERATED = ("Request Moderated", "Content Moderated")


@dataclass(frozen=True)
class Polling:
    """How to poll: the first interval, growing 1.5x per poll up to ``max_interval``, until
    ``timeout`` seconds after the submit."""

    interval: float
    max_interval: float
    timeout: float


class BflApi:
    """The BFL protocol (:class:`~fluxserve.client.protocol.ImagesApi`)."""

    def __init__(self, session: Session, polling: Polling) -> None:
        """Talk to the session's server, polling as ``polling`` says."""
        self.session = session
        self.polling = polling

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit, poll until Ready, download; timings cover each of the three phases."""
        job_id, polling_url = await self.submit(request)
        t_submit = time.monotonic()
        result = await self.poll(job_id, polling_url, deadline=t_submit + self.polling.timeout)
        t_ready = time.monotonic()
        sample = result["sample"]
        image = await self.fetch(sample, job_id)
        t_done = time.monotonic()
        timings = {
            "submit_s": t_submit - request.started,
            "wait_s": t_ready - t_submit,
            "download_s": t_done - t_ready,
            "total_s": t_done - request.started,
        }
        for k, v in (result.get("timings") or {}).items():
            if isinstance(v, int | float):
                timings[f"server_{k}"] = float(v)
        return GenerationResult(
            image=image,
            seed=result.get("seed"),
            prompt=result.get("prompt") or request.prompt,
            model=request.model,
            job_id=job_id,
            output_format=format_of(image),
            timings=timings,
            url=sample,
        )

    async def submit(self, request: GenerationRequest) -> tuple[str, str]:
        """Create the job; returns its id and the absolute URL to poll.

        Input images go as ``input_image``, ``input_image_2``, ...: a URL as it is (the server
        fetches it), anything else as base64."""
        body: dict[str, Any] = {"prompt": request.prompt, **request.params}
        for i, (data, original) in enumerate(zip(request.images, request.originals, strict=True)):
            name = "input_image" if i == 0 else f"input_image_{i + 1}"
            body[name] = original if is_http_url(original) else base64.b64encode(data).decode()
        base_url = self.session.base_url
        resp = await self.session.request(
            "POST", f"{base_url}/v1/{request.model}", json=body, headers=idempotency_headers()
        )
        raise_for_response(resp)
        sub = resp.json()
        job_id = str(sub["id"])
        polling_url = urljoin(base_url + "/", sub.get("polling_url") or f"v1/get_result?id={job_id}")
        return job_id, polling_url

    async def poll(self, job_id: str, polling_url: str, deadline: float) -> dict[str, Any]:
        """Poll with a growing interval until the job is Ready; returns its ``result``.

        Raises :class:`ModeratedError`, :class:`ServerError` for a failed or unknown job, or
        :class:`GenerationTimeout` once ``deadline`` (a ``time.monotonic()`` value) passes."""
        interval = self.polling.interval
        while True:
            r = await self.session.request("GET", polling_url, job_id)
            raise_for_response(r, job_id)
            data = r.json()
            status = data.get("status")
            if status == "Ready":
                return data["result"]
            if status in MODERATED:
                kind: Literal["request", "content"] = "request" if status.startswith("Request") else "content"
                category = ((data.get("details") or {}).get("moderation") or {}).get("category")
                message = f"{status} (category: {category or 'unspecified'})"
                raise ModeratedError(message, kind, category, job_id)
            if status == "Error":
                details = data.get("details") or {}
                raise ServerError(f"generation failed: {details.get('error') or details}", job_id)
            if status == "Task not found":
                raise ServerError("the server does not know this job (Task not found)", job_id)
            if time.monotonic() > deadline:
                raise GenerationTimeout(f"not ready after {self.polling.timeout:.0f}s", job_id)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.polling.max_interval)

    async def fetch(self, sample_url: str, job_id: str) -> bytes:
        """Download the finished image."""
        img = await self.session.request("GET", sample_url, job_id)
        if img.status_code != 200:
            raise ServerError(f"downloading the result gave HTTP {img.status_code}", job_id)
        return img.content
