"""JobService: submit a spec, look jobs up, wait for them to end."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import replace

from fluxserve.jobs.models import Job, JobStatus
from fluxserve.jobs.store import JobStore
from fluxserve.spec import GenerationSpec
from fluxserve.storage import Storage

MAX_SEED = 2**32 - 1


def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


class JobService:
    """The one path by which both protocols create and observe jobs."""

    def __init__(self, store: JobStore, storage: Storage) -> None:
        self.store = store
        self.storage = storage
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self.work_available = asyncio.Event()

    async def submit(
        self,
        spec: GenerationSpec,
        input_images: list[bytes] | None = None,
        api_key_id: str | None = None,
    ) -> Job:
        """Persist a job (inputs first, then the row) and wake the worker."""
        job_id = str(uuid.uuid4())
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
            api_key_id=api_key_id,
        )
        self.store.create(job)
        self.work_available.set()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def notify(self, job_id: str) -> None:
        for ev in self._waiters.pop(job_id, []):
            ev.set()

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
