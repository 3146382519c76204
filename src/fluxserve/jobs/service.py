"""JobService: the one owner of a job's life, from submission to the retention sweep.

Submit (moderate, upsample, store inputs, create the job with its idempotency key and webhook
in one transaction), look up (scoped to the key that made the job), wait, cancel, end (wake
waiters, publish the terminal event, release the webhook), recover after a restart, and sweep
expired jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from fluxserve.accounts import Accounting
from fluxserve.accounts.ledger import Reconciled
from fluxserve.fair import ANONYMOUS, FairShare
from fluxserve.jobs.events import JobEvents
from fluxserve.jobs.routing import OverflowRouter
from fluxserve.records import IdempotencyClaim, Job, JobStatus, Recovery, WebhookTarget
from fluxserve.safety import Moderator
from fluxserve.spec import GenerationSpec
from fluxserve.storage import Storage
from fluxserve.stores import EventBus, JobQueue, JobStore, WebhookStore
from fluxserve.upsampling import BuiltinUpsampler, PromptUpsampler

log = logging.getLogger("fluxserve.jobs")

ORPHAN_HOLD_S = 600.0
"""A credit hold this old whose job was never stored is a crashed submission's, released at the
next start or sweep (a submission moderates and upsamples between its hold and its row)."""

LATE_WEBHOOK_S = 60.0
"""A webhook still waiting this long after its job ended is sent by the next sweep (its job's
process died between the two; the usual path activates it at once)."""


class QueueFull(Exception):
    """The queue holds ``max_queued`` jobs already: try again later."""

    def __init__(self, depth: int, retry_after_s: int = 30) -> None:
        super().__init__(f"the queue is full ({depth} jobs waiting); try again later")
        self.depth = depth
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class JobPolicy:
    """Limits on the service's work, and how it encodes results."""

    max_queued: int = 1000
    """Submissions beyond this many queued jobs are refused (429)."""
    max_attempts: int = 3
    """Times a job is started before a crash during it ends it as Error instead of re-running."""
    retention_s: float = 86_400
    """How long ended jobs (rows and files) are kept."""
    fair_share: bool = True
    """Queue by account, round-robin with weights (:mod:`fluxserve.fair`); False: by arrival."""
    png_compress_level: int = 1
    """zlib level of PNG results (0-9)."""


class JobService:
    """The one path by which both protocols create and observe jobs."""

    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        webhooks: WebhookStore,
        storage: Storage,
        moderator: Moderator | None = None,
        upsampler: PromptUpsampler | None = None,
        scene_models: frozenset[str] = frozenset(),
        policy: JobPolicy | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.webhooks = webhooks
        self.storage = storage
        self.moderator = moderator or Moderator(enabled=False)
        self.upsampler = upsampler or BuiltinUpsampler()
        self.scene_models = scene_models
        """Model ids served by the embedded model, whose prompts upsample within its grammar."""
        self.policy = policy or JobPolicy()
        self.work_available = asyncio.Event()
        self.events = JobEvents(bus)
        self.events.on_end = self._ended_elsewhere  # a job ended in another process (PostgreSQL)
        self.on_webhook: Callable[[], None] | None = None
        """Called when a webhook becomes due (the dispatcher's wake-up)."""
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self.router: OverflowRouter | None = None
        """Where new jobs of ``route = "overflow"`` models run; None: all run here."""
        self.on_routed: list[Callable[[str, str], None]] = []
        """Called with (model, served_by) for each overflow decision (metrics)."""
        self.accounting: Accounting | None = None
        """Credits and limits (set by the app factory): a hold at submit, settled or released
        when the job ends; None: no accounting, jobs visible to their own key only."""

    async def submit(
        self,
        spec: GenerationSpec,
        input_images: list[bytes] | None = None,
        owner: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        base_url: str = "",
        mask: bytes | None = None,
    ) -> Job:
        """Moderate, upsample, then persist a job (inputs and ``mask`` first, then the row) and
        wake the worker. A moderated request is still a job, ended at once as Request Moderated.

        With ``idempotency``, a key already used by ``owner`` with the same body returns that
        job instead (and nothing new is kept); raises ``IdempotencyConflict`` for another body
        and :class:`QueueFull` when the queue is at its bound."""
        depth = self.queue.depth()
        if depth >= self.policy.max_queued:
            raise QueueFull(depth)
        job_id = str(uuid.uuid4())
        if self.accounting is not None:  # 402/429 before any work
            self.accounting.hold(owner, job_id, spec)
        try:
            spec, audit, blocked = await self._moderate(spec, input_images or [])
        except BaseException:
            self._release(job_id)
            raise
        webhook = WebhookTarget(spec.webhook_url, spec.webhook_secret, base_url) if spec.webhook_url else None
        if blocked is not None:
            now = time.time()
            job = Job(
                id=job_id,
                status=JobStatus.REQUEST_MODERATED,
                spec=spec,
                created_at=now,
                finished_at=now,
                details={"moderation": blocked},
                moderation=audit,
                owner=owner,
            )
        else:
            keys = []
            for i, data in enumerate(input_images or []):
                key = f"inputs/{job_id}/{i}.png"
                await asyncio.to_thread(self.storage.put, key, data)
                keys.append(key)
            mask_key = None
            if mask is not None:
                mask_key = f"inputs/{job_id}/mask.png"
                await asyncio.to_thread(self.storage.put, mask_key, mask)
            routing = self.router.decide(spec, owner) if self.router is not None else None
            job = Job(
                id=job_id,
                status=JobStatus.QUEUED,
                spec=replace(spec, input_images=tuple(keys), mask_image=mask_key),
                created_at=time.time(),
                moderation=audit,
                owner=owner,
                routing=routing,
            )
        try:
            stored = self.store.create(job, idempotency, webhook, self._fair_share(owner))
        except BaseException:
            self._release(job_id)
            await asyncio.to_thread(self.storage.delete_prefix, f"inputs/{job_id}")
            raise
        if stored.id != job_id:  # an earlier request with this Idempotency-Key made it
            self._release(job_id)
            await asyncio.to_thread(self.storage.delete_prefix, f"inputs/{job_id}")
            return stored
        if stored.terminal:
            self.job_ended(stored.id)
        else:
            self.routed(stored)
            self.work_available.set()
        return stored

    def routed(self, job: Job) -> None:
        """Tell the ``on_routed`` observers where ``job`` runs (overflow models only)."""
        if job.routing is not None:
            for observer in self.on_routed:
                try:
                    observer(job.spec.model, str(job.routing.get("served_by")))
                except Exception:
                    log.exception("an observer of routing decisions failed")

    def _fair_share(self, owner: str | None) -> FairShare | None:
        if not self.policy.fair_share:
            return None
        if self.accounting is not None:
            return self.accounting.fair_share(owner)
        return FairShare(ANONYMOUS if owner is None else f"key:{owner}")

    async def _moderate(
        self, spec: GenerationSpec, input_images: list[bytes]
    ) -> tuple[GenerationSpec, list[dict[str, Any]], dict[str, Any] | None]:
        """Prompt, input images, upsampled prompt: (the spec to run, the audit trail, the
        public reason if blocked). Runs off the event loop: it is CPU work."""
        tolerance = spec.safety_tolerance
        audit: list[dict[str, Any]] = []
        decision = await asyncio.to_thread(self.moderator.check_prompt, spec.prompt, tolerance)
        audit.append(decision.audit())
        if decision.allowed and input_images:

            def check_inputs() -> Any:
                decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in input_images]
                return self.moderator.check_images(decoded, tolerance, "input_image")

            decision = await asyncio.to_thread(check_inputs)
            audit.append(decision.audit())
        if decision.allowed and spec.prompt_upsampling:
            rewritten = await self.upsampler.upsample(
                spec.prompt, spec.seed, scene_vocabulary=spec.model in self.scene_models
            )
            spec = replace(spec, prompt=rewritten, original_prompt=spec.prompt)
            decision = await asyncio.to_thread(self.moderator.check_prompt, rewritten, tolerance)
            audit.append({**decision.audit(), "source": "upsampled_prompt"})
        return spec, audit, None if decision.allowed else decision.public()

    def get(self, job_id: str, owner: str | None) -> Job | None:
        """The job if ``owner`` made it (None is the owner of jobs made with no key configured)
        or, with accounting, another key of the same named account did; None otherwise, exactly
        as for a job that does not exist."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.owner == owner:
            return job
        if self.accounting is not None and self.accounting.same_account(job.owner, owner):
            return job
        return None

    def _release(self, job_id: str) -> None:
        if self.accounting is not None:
            self.accounting.release(job_id)

    def cancel(self, job_id: str, owner: str | None) -> Job | None:
        """Cancel a job of ``owner``: a queued one ends now and never runs; a running one stops
        at its next denoising step. Returns the job as it stands (None if not ``owner``'s)."""
        if self.get(job_id, owner) is None:
            return None
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

    def job_ended(self, job_id: str) -> None:
        """Everything that follows the end of a job: wake waiters, publish the terminal event,
        release its webhook. Called on the event loop."""
        self._wake(job_id)
        self._settle(job_id)
        self.events.publish(job_id, "end")
        if self.webhooks.activate(job_id) and self.on_webhook is not None:
            self.on_webhook()

    def _ended_elsewhere(self, job_id: str) -> None:
        self._wake(job_id)
        self._settle(job_id)  # once: a second node's try finds the hold ended already

    def _settle(self, job_id: str) -> None:
        """Settle or release the credits held for an ended job (accounting only)."""
        if self.accounting is None:
            return
        try:
            job = self.store.get(job_id)
            if job is not None and job.terminal:
                self.accounting.job_ended(job)
        except Exception:  # the job's end stands; the hold stays open (logged)
            log.exception("could not settle the credits of job %s", job_id)

    def _reconciled(self, done: Reconciled) -> list[str]:
        """What follows :meth:`Accounting.reconcile` on the event loop: wake the waiters of the
        jobs whose holds it ended; returns the crashed submissions, whose inputs the caller
        deletes."""
        for job_id in done.ended:
            self._wake(job_id)
            self.events.publish(job_id, "end")
        return done.orphans

    def _activate_late_webhooks(self, ended_before: float) -> None:
        """Make due the webhooks still waiting for jobs that ended before ``ended_before``: a
        process died between a job's end and its webhook's activation."""
        late = self.webhooks.activate_ended(ended_before)
        if late:
            log.warning("%d webhook(s) of ended jobs were still waiting; sending them now", late)
            if self.on_webhook is not None:
                self.on_webhook()

    def _wake(self, job_id: str) -> None:
        for ev in self._waiters.pop(job_id, []):
            ev.set()

    def recover(self) -> Recovery:
        """At start: put jobs a dead process left running back in the queue (or end those that
        crashed it too often), make in-flight webhook deliveries due again, and finish what a
        crash interrupted after a job's end: its credit hold, its webhook."""
        recovery = self.queue.recover(self.policy.max_attempts)
        for job_id in recovery.failed:
            self.job_ended(job_id)
        self.webhooks.recover()
        now = time.time()
        if self.accounting is not None:
            done = self.accounting.reconcile(self.store.get, now, now - ORPHAN_HOLD_S)
            for job_id in self._reconciled(done):
                self.storage.delete_prefix(f"inputs/{job_id}")
        self._activate_late_webhooks(ended_before=now)
        if recovery.requeued:
            log.warning("re-queued %d job(s) left running by a previous process", len(recovery.requeued))
            self.work_available.set()
        if recovery.failed:
            log.error(
                "ended %d job(s) that were running at %d crashes",
                len(recovery.failed),
                self.policy.max_attempts,
            )
        return recovery

    async def sweep(self, now: float | None = None) -> int:
        """Delete jobs (rows, inputs, results) that ended more than the retention time ago,
        after finishing what a crash interrupted: credit holds left open (ORPHAN_HOLD_S),
        webhooks left waiting (LATE_WEBHOOK_S)."""
        now = now if now is not None else time.time()
        cutoff = now - self.policy.retention_s
        # First the holds a crash left open (before their jobs are deleted below), off the event
        # loop: a job read each. The holds of jobs younger than ORPHAN_HOLD_S are left to the
        # usual path, which is cheaper.
        if self.accounting is not None:
            orphan_before = now - ORPHAN_HOLD_S
            done = await asyncio.to_thread(
                self.accounting.reconcile, self.store.get, max(cutoff, orphan_before), orphan_before
            )
            for job_id in self._reconciled(done):
                await asyncio.to_thread(self.storage.delete_prefix, f"inputs/{job_id}")
        self._activate_late_webhooks(ended_before=now - LATE_WEBHOOK_S)
        expired = self.store.finished_before(cutoff)
        for job_id in expired:
            await asyncio.to_thread(self.storage.delete_prefix, f"results/{job_id}")
            await asyncio.to_thread(self.storage.delete_prefix, f"inputs/{job_id}")
            self.store.delete(job_id)
        return len(expired)

    async def sweep_forever(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` seconds; a failed sweep is logged and tried again."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)
