from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fluxserve.spec import GenerationSpec


class JobStatus(StrEnum):
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
    api_key_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL
