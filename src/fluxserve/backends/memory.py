"""The in-memory backend: every seam in plain Python objects, for tests and throwaway servers.

Complete, not a mock: it follows the same contract as the SQLite backend (the contract suite in
``tests/backends`` runs against both); it just forgets everything when the process ends.
"""

from __future__ import annotations

import hmac
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fluxserve.fair import FairShare, Place, place
from fluxserve.keys import ApiKey, hash_key, new_key
from fluxserve.records import (
    IdempotencyClaim,
    Job,
    JobStatus,
    Recovery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookTarget,
)
from fluxserve.stores import IDEMPOTENCY_WINDOW_S, REQUEUED_LOCALLY, IdempotencyConflict, gave_up_error


@dataclass
class _Row:
    job: Job
    place: Place
    seq: int
    cancel_requested: bool = False

    @property
    def sort_at(self) -> float:
        return self.place.sort_at

    @property
    def counts(self) -> bool:
        """Whether its fair-share end still counts for its flow (not cancelled before it ran)."""
        return self.job.started_at is not None or self.job.status == JobStatus.QUEUED


@dataclass
class _Idempotency:
    digest: str
    job_id: str
    created_at: float


class MemoryJobStore:
    """``JobStore`` and ``JobQueue`` in a dict, under one lock."""

    def __init__(self, webhooks: MemoryWebhookStore | None = None, batch_delay_s: float = 60.0) -> None:
        self.webhooks = webhooks or MemoryWebhookStore()
        self.webhooks.finished_at = self._finished_at
        self.batch_delay_s = batch_delay_s
        self._rows: dict[str, _Row] = {}
        self._idempotency: dict[tuple[str, str], _Idempotency] = {}
        self._seq = itertools.count()
        self._lock = threading.RLock()

    def create(
        self,
        job: Job,
        idempotency: IdempotencyClaim | None = None,
        webhook: WebhookTarget | None = None,
        fair: FairShare | None = None,
    ) -> Job:
        """Store the job with its idempotency key and webhook, atomically."""
        now = time.time()
        with self._lock:
            if idempotency is not None:
                self._idempotency = {
                    k: v for k, v in self._idempotency.items() if v.created_at >= now - IDEMPOTENCY_WINDOW_S
                }
                slot = (idempotency.key, job.owner or "")
                found = self._idempotency.get(slot)
                if found is not None:
                    if found.digest != idempotency.digest:
                        raise IdempotencyConflict(idempotency.key)
                    if found.job_id in self._rows:
                        return self._rows[found.job_id].job
                self._idempotency[slot] = _Idempotency(idempotency.digest, job.id, now)
            where = place(
                created_at=job.created_at,
                interactive=job.spec.interactive,
                images=job.spec.num_images,
                batch_delay_s=self.batch_delay_s,
                fair=fair if job.status == JobStatus.QUEUED else None,
                clock=self._fair_clock,
                flow_end=self._flow_end,
            )
            self._rows[job.id] = _Row(job, where, next(self._seq))
            if webhook is not None:
                self.webhooks.register(job.id, webhook)
        return job

    def _finished_at(self, job_id: str) -> float | None:
        with self._lock:
            row = self._rows.get(job_id)
            return row.job.finished_at if row is not None else None

    def _fair_clock(self) -> float | None:
        taken = [r.place.start for r in self._rows.values() if r.job.started_at is not None]
        return max((t for t in taken if t is not None), default=None)

    def _flow_end(self, flow: str) -> float | None:
        ends = [r.place.end for r in self._rows.values() if r.place.flow == flow and r.counts]
        return max((e for e in ends if e is not None), default=None)

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with self._lock:
            row = self._rows.get(job_id)
            return row.job if row else None

    def list_owned(self, owner: str | None, limit: int, before: float | None = None) -> list[Job]:
        """``owner``'s jobs, newest first (see ``JobStore.list_owned``)."""
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.job.owner == owner and (before is None or r.job.created_at < before)
            ]
        rows.sort(key=lambda r: (r.job.created_at, r.seq), reverse=True)
        return [r.job for r in rows[: max(0, limit)]]

    def _queued(self, route: str | None = None) -> list[_Row]:
        rows = [r for r in self._rows.values() if r.job.status == JobStatus.QUEUED and r.job.route == route]
        return sorted(rows, key=lambda r: (r.sort_at, r.seq))

    def claim_next(self, route: str | None = None) -> Job | None:
        """Mark the first queued job of ``route``'s lane running and return it."""
        with self._lock:
            queued = self._queued(route)
            if not queued:
                return None
            return self._start(queued[0])

    @staticmethod
    def _start(row: _Row) -> Job:
        """Mark ``row``'s job running under one more attempt (the lock is held)."""
        row.job = replace(
            row.job,
            status=JobStatus.RUNNING,
            attempts=row.job.attempts + 1,
            started_at=time.time(),
            progress=0.0,
        )
        return row.job

    def peek(self, limit: int) -> list[Job]:
        """The first ``limit`` queued jobs, left queued."""
        with self._lock:
            return [r.job for r in self._queued()[: max(0, limit)]]

    def claim_queued(self, job_id: str, worker: str) -> Job | None:
        """Mark this job running if it is still queued."""
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status != JobStatus.QUEUED:
                return None
            return self._start(row)

    def position(self, job_id: str) -> int | None:
        """Queued jobs ahead of this one."""
        with self._lock:
            row = self._rows.get(job_id)
            ids = [r.job.id for r in self._queued(row.job.route if row else None)]
            return ids.index(job_id) if job_id in ids else None

    def reroute(self, job_id: str, attempt: int, routing: dict[str, Any]) -> bool:
        """Put a job its upstream did not accept back in the local queue, if ``attempt``
        still holds it."""
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status != JobStatus.RUNNING or row.job.attempts != attempt:
                return False
            row.job = replace(row.job, status=JobStatus.QUEUED, progress=0.0, routing=routing)
            return True

    def local_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """``model``'s queued and running jobs on the local queue, and the engine seconds of
        its last ``recent`` jobs made here."""
        with self._lock:
            mine = [r.job for r in self._rows.values() if r.job.spec.model == model and r.job.route is None]
        return _active(mine), _engine_seconds(mine, model, recent)

    def upstream_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """Queued and running jobs in the upstream lane (every model's), and the engine seconds
        of ``model``'s last ``recent`` jobs made there."""
        with self._lock:
            lane = [r.job for r in self._rows.values() if r.job.route == "upstream"]
        return _active(lane), _engine_seconds(lane, model, recent)

    def depth(self) -> int:
        """Jobs waiting in the queue."""
        with self._lock:
            return sum(1 for r in self._rows.values() if r.job.status == JobStatus.QUEUED)

    def recover(self, max_attempts: int) -> Recovery:
        """Requeue jobs left running, or end those tried ``max_attempts`` times."""
        requeued: list[str] = []
        failed: list[str] = []
        with self._lock:
            for row in self._rows.values():
                job = row.job
                if job.status != JobStatus.RUNNING:
                    continue
                if job.attempts < max_attempts:  # on the local queue: the upstream lane may be gone
                    routing = job.routing
                    if job.route is not None:
                        routing = {**(routing or {}), "served_by": "local", "reason": REQUEUED_LOCALLY}
                    row.job = replace(job, status=JobStatus.QUEUED, progress=0.0, routing=routing)
                    requeued.append(job.id)
                else:
                    row.job = replace(
                        job,
                        status=JobStatus.ERROR,
                        finished_at=time.time(),
                        details={"error": gave_up_error(job.attempts)},
                    )
                    failed.append(job.id)
        return Recovery(requeued, failed)

    def set_progress(self, job_id: str, progress: float) -> None:
        """Record progress of a running job."""
        with self._lock:
            row = self._rows.get(job_id)
            if row and row.job.status == JobStatus.RUNNING:
                row.job = replace(row.job, progress=progress)

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        moderation: list[dict[str, Any]] | None = None,
    ) -> bool:
        """End a running job if ``attempt`` still holds it."""
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status != JobStatus.RUNNING or row.job.attempts != attempt:
                return False
            row.job = replace(
                row.job,
                status=status,
                finished_at=time.time(),
                result=result,
                details=details,
                moderation=moderation if moderation is not None else row.job.moderation,
                progress=1.0 if status == JobStatus.READY else row.job.progress,
            )
            return True

    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled."""
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status != JobStatus.QUEUED:
                return False
            row.job = replace(
                row.job,
                status=JobStatus.ERROR,
                finished_at=time.time(),
                details={"error": "cancelled", "steps_done": 0},
            )
            return True

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation."""
        with self._lock:
            row = self._rows.get(job_id)
            if row and row.job.status == JobStatus.RUNNING:
                row.cancel_requested = True

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job is flagged for cancellation."""
        with self._lock:
            row = self._rows.get(job_id)
            return bool(row and row.cancel_requested)

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs that ended before ``cutoff``."""
        with self._lock:
            return [
                r.job.id
                for r in self._rows.values()
                if r.job.finished_at is not None and r.job.finished_at < cutoff
            ]

    def delete(self, job_id: str) -> None:
        """Forget a job, its webhook and its idempotency keys."""
        with self._lock:
            self._rows.pop(job_id, None)
            self._idempotency = {k: v for k, v in self._idempotency.items() if v.job_id != job_id}
            self.webhooks.forget(job_id)


class MemoryWebhookStore:
    """``WebhookStore`` in a dict."""

    def __init__(self) -> None:
        self._deliveries: dict[str, WebhookDelivery] = {}
        self._attempts: dict[str, list[WebhookAttempt]] = {}
        self._lock = threading.RLock()
        self.finished_at: Callable[[str], float | None] = lambda job_id: None
        """When a job ended (None: not ended, or unknown); set by the job store it belongs to."""

    def register(self, job_id: str, target: WebhookTarget) -> None:
        """Register a job's webhook (waiting until the job ends); called by the job store."""
        with self._lock:
            self._deliveries[job_id] = WebhookDelivery(
                str(uuid.uuid4()), job_id, target.url, target.secret, target.base_url, "waiting", 0, 0.0
            )

    def forget(self, job_id: str) -> None:
        """Drop a job's delivery and attempts."""
        with self._lock:
            self._deliveries.pop(job_id, None)
            self._attempts.pop(job_id, None)

    def activate(self, job_id: str) -> bool:
        """Make the job's waiting delivery due now."""
        with self._lock:
            d = self._deliveries.get(job_id)
            if d is None or d.state != "waiting":
                return False
            self._deliveries[job_id] = replace(d, state="pending", next_at=time.time())
            return True

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim due deliveries (pending -> sending)."""
        now = time.time()
        with self._lock:
            ready = sorted(
                (d for d in self._deliveries.values() if d.state == "pending" and d.next_at <= now),
                key=lambda d: d.next_at,
            )[:limit]
            for d in ready:
                self._deliveries[d.job_id] = replace(d, state="sending")
            return ready

    def recover(self) -> None:
        """In-flight deliveries are due again."""
        with self._lock:
            for job_id, d in list(self._deliveries.items()):
                if d.state == "sending":
                    self._deliveries[job_id] = replace(d, state="pending")

    def activate_ended(self, ended_before: float) -> int:
        """Deliveries still waiting for a job that ended before ``ended_before`` are due now."""
        with self._lock:
            waiting = [job_id for job_id, d in self._deliveries.items() if d.state == "waiting"]
        # The job store's lock is taken outside ours: the store calls us under its own.
        late = 0
        for job_id in waiting:
            finished = self.finished_at(job_id)
            if finished is not None and finished < ended_before and self.activate(job_id):
                late += 1
        return late

    def record(
        self,
        job_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_s: float,
        state: str,
        next_at: float,
    ) -> None:
        """Log an attempt and move the delivery on."""
        with self._lock:
            self._attempts.setdefault(job_id, []).append(
                WebhookAttempt(attempt, time.time(), status_code, error, round(duration_s, 4))
            )
            d = self._deliveries.get(job_id)
            if d is not None:
                self._deliveries[job_id] = replace(d, state=state, attempts=attempt, next_at=next_at)

    def attempts(self, job_id: str) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
        """The delivery and its attempts, oldest first."""
        with self._lock:
            return self._deliveries.get(job_id), list(self._attempts.get(job_id, []))


class MemoryKeyStore:
    """``KeyStore`` in a dict of hashes."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._lock = threading.RLock()

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Create a key; the secret is returned once."""
        key_id, secret = new_key()
        record = ApiKey(key_id, name, time.time(), None, None)
        with self._lock:
            self._keys[key_id] = (record, hash_key(secret))
        return record, secret

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self._lock:
            return sorted((k for k, _ in self._keys.values()), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key."""
        with self._lock:
            found = self._keys.get(key_id)
            if found is None or found[0].revoked_at is not None:
                return False
            self._keys[key_id] = (replace(found[0], revoked_at=time.time()), found[1])
            return True

    def any_active(self) -> bool:
        """Whether any key is active."""
        with self._lock:
            return any(k.revoked_at is None for k, _ in self._keys.values())

    def ever_created(self) -> bool:
        """Whether any key was ever created (revoked ones are kept)."""
        with self._lock:
            return bool(self._keys)

    def is_revoked(self, secret: str) -> bool:
        """Whether ``secret`` is a revoked key."""
        digest = hash_key(secret)
        with self._lock:
            return any(
                k.revoked_at is not None and hmac.compare_digest(h, digest) for k, h in self._keys.values()
            )

    def verify(self, secret: str) -> str | None:
        """The id of the active key ``secret`` is, else None."""
        digest = hash_key(secret)
        with self._lock:
            for key, stored in self._keys.values():
                if key.revoked_at is None and hmac.compare_digest(stored, digest):
                    return key.id
        return None


def _active(jobs: list[Job]) -> int:
    return sum(1 for j in jobs if j.status in (JobStatus.QUEUED, JobStatus.RUNNING))


def _engine_seconds(jobs: list[Job], model: str, recent: int) -> list[float]:
    """The engine seconds of ``model``'s last ``recent`` ready jobs among ``jobs``, newest first."""
    done = sorted(
        (j for j in jobs if j.spec.model == model and j.status == JobStatus.READY and j.result),
        key=lambda j: -(j.finished_at or 0),
    )
    return [float(j.result["engine_s"]) for j in done[:recent] if j.result and "engine_s" in j.result]
