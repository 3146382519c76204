"""The job: the core object both protocols see, and the records that travel with it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fluxserve.spec import GenerationSpec


class JobStatus(StrEnum):
    """Where a job is in its life; the last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    ERROR = "error"
    REQUEST_MODERATED = "request_moderated"
    CONTENT_MODERATED = "content_moderated"


TERMINAL = frozenset(
    {JobStatus.READY, JobStatus.ERROR, JobStatus.REQUEST_MODERATED, JobStatus.CONTENT_MODERATED}
)


@dataclass(frozen=True)
class Job:
    """One generation request and everything recorded about it."""

    id: str
    status: JobStatus
    spec: GenerationSpec
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    attempts: int = 0
    result: dict[str, Any] | None = None
    """When ready: files (storage keys), prompt, seed, width, height, timings."""
    details: dict[str, Any] | None = None
    """What the API shows about a failure or a moderation decision."""
    moderation: list[dict[str, Any]] | None = None
    """Audit trail: every moderation decision (source, category, score, tolerance, threshold)."""
    owner: str | None = None
    """The API key id that made the job; None for jobs made while no key was configured."""
    routing: dict[str, Any] | None = None
    """Models with ``route = "overflow"``: where the job runs and why (``served_by``: ``local``
    or ``upstream:<name>``, ``reason``, ``estimated_wait_s``)."""

    @property
    def terminal(self) -> bool:
        """True once the job has ended (ready, error or moderated)."""
        return self.status in TERMINAL

    @property
    def route(self) -> str | None:
        """The queue lane it waits in: ``upstream`` when routed to an upstream (taken by the
        upstream lane, never by a local engine), else None (the local queue)."""
        served_by = (self.routing or {}).get("served_by", "")
        return "upstream" if str(served_by).startswith("upstream:") else None


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` and the digest of the request body it was sent with."""

    key: str
    digest: str


@dataclass(frozen=True)
class WebhookTarget:
    """Where to announce a job's end, registered with the job when it is created."""

    url: str
    secret: str | None
    base_url: str
    """The base URL the job was submitted to, for the result URLs in the body."""


@dataclass(frozen=True)
class WebhookDelivery:
    """The delivery of one job's webhook: waiting (job running), pending, sending, delivered
    or failed."""

    id: str
    """Stable across retries: receivers de-duplicate by it (delivery is at least once)."""
    job_id: str
    url: str
    secret: str | None
    base_url: str
    state: str
    attempts: int
    next_at: float


@dataclass(frozen=True)
class WebhookAttempt:
    """One try at delivering a webhook."""

    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_s: float | None


@dataclass(frozen=True)
class Recovery:
    """What restart recovery did: jobs put back in the queue, and jobs ended for good."""

    requeued: list[str]
    failed: list[str]
