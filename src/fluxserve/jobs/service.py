"""JobService: submit a spec, look jobs up, wait for them to end."""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PIL import Image

from fluxserve.jobs.events import JobEvents
from fluxserve.jobs.models import Job, JobStatus
from fluxserve.jobs.store import JobStore
from fluxserve.jobs.webhooks import WebhookStore
from fluxserve.safety import Moderator
from fluxserve.spec import GenerationSpec
from fluxserve.storage import Storage
from fluxserve.upsampling import BuiltinUpsampler, PromptUpsampler

MAX_SEED = 2**32 - 1


def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


class JobService:
    """The one path by which both protocols create and observe jobs."""

    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        moderator: Moderator | None = None,
        upsampler: PromptUpsampler | None = None,
        scene_models: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.storage = storage
        self.moderator = moderator or Moderator(enabled=False)
        self.upsampler = upsampler or BuiltinUpsampler()
        self.scene_models = scene_models
        """Model ids served by the embedded model, whose prompts upsample within its grammar."""
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self.work_available = asyncio.Event()
        self.events = JobEvents()
        self.webhooks: WebhookStore | None = None
        self.on_webhook: Callable[[], None] | None = None

    async def submit(
        self,
        spec: GenerationSpec,
        input_images: list[bytes] | None = None,
        api_key_id: str | None = None,
    ) -> Job:
        """Moderate, upsample, then persist a job (inputs first, then the row) and wake the
        worker. A moderated request is still a job, ended at once as Request Moderated."""
        job_id = str(uuid.uuid4())
        tolerance = spec.safety_tolerance
        audit: list[dict[str, Any]] = []
        decision = self.moderator.check_prompt(spec.prompt, tolerance)
        audit.append(decision.audit())
        if decision.allowed and input_images:
            decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in input_images]
            decision = await asyncio.to_thread(self.moderator.check_images, decoded, tolerance, "input_image")
            audit.append(decision.audit())
        if decision.allowed and spec.prompt_upsampling:
            rewritten = await self.upsampler.upsample(
                spec.prompt, spec.seed, scene_vocabulary=spec.model in self.scene_models
            )
            spec = replace(spec, prompt=rewritten, extras={**spec.extras, "original_prompt": spec.prompt})
            decision = self.moderator.check_prompt(rewritten, tolerance)
            audit.append({**decision.audit(), "source": "upsampled_prompt"})
        if not decision.allowed:
            now = time.time()
            job = Job(
                id=job_id,
                status=JobStatus.REQUEST_MODERATED,
                spec=spec,
                created_at=now,
                finished_at=now,
                details={"moderation": decision.public()},
                moderation=audit,
                api_key_id=api_key_id,
            )
            self.store.create(job)
            self.job_ended(job.id)
            return job
        keys = []
        for i, data in enumerate(input_images or []):
            key = f"inputs/{job_id}/{i}.png"
            await asyncio.to_thread(self.storage.put, key, data)
            keys.append(key)
        spec = replace(spec, input_images=tuple(keys))
        job = Job(
            id=job_id,
            status=JobStatus.QUEUED,
            spec=spec,
            created_at=time.time(),
            moderation=audit,
            api_key_id=api_key_id,
        )
        self.store.create(job)
        self.work_available.set()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def job_ended(self, job_id: str) -> None:
        """Everything that follows the end of a job: wake waiters, publish the terminal event,
        queue its webhook. Called on the event loop."""
        for ev in self._waiters.pop(job_id, []):
            ev.set()
        self.events.publish(job_id, "end")
        job = self.store.get(job_id)
        if job is not None and job.spec.webhook_url and self.webhooks is not None:
            self.webhooks.enqueue(
                job_id,
                job.spec.webhook_url,
                job.spec.webhook_secret,
                str(job.spec.extras.get("base_url", "")),
            )
            if self.on_webhook is not None:
                self.on_webhook()

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one ends now and never runs; a running one stops at its next
        denoising step. Returns the job as it stands (None if unknown)."""
        if self.store.cancel_queued(job_id):
            self.job_ended(job_id)
        else:
            self.store.request_cancel(job_id)
        return self.store.get(job_id)

    async def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it has ended, or as it stands when ``timeout_s`` runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            ev = asyncio.Event()
            self._waiters.setdefault(job_id, []).append(ev)
            job = self.store.get(job_id)
            if job is None or job.terminal:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return job
            # Re-check now and then as well: another process may finish the job.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout=min(remaining, 1.0))
