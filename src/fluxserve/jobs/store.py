"""The job store. In the SQLite backend the jobs table is also the queue: a worker claims the
oldest queued row in one transaction, and completion is conditional on the claim it holds."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from fluxserve.db import Database
from fluxserve.jobs.models import Job, JobStatus
from fluxserve.spec import GenerationSpec


class JobStore(Protocol):
    def create(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running (one more attempt) and return it."""

    def requeue_running(self) -> int:
        """After a restart: put jobs left running by a dead worker back in the queue."""

    def set_progress(self, job_id: str, progress: float) -> None: ...
    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        moderation: list[dict[str, Any]] | None = None,
    ) -> bool:
        """End a job, only if it is still running under ``attempt``; False otherwise.
        ``moderation``, when given, replaces the job's moderation audit trail."""

    def queue_position(self, job_id: str) -> int | None: ...
    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled; False if it is not queued."""

    def request_cancel(self, job_id: str) -> None:
        """Ask the worker running a job to stop it."""

    def cancel_requested(self, job_id: str) -> bool: ...
    def finished_before(self, cutoff: float) -> list[str]: ...
    def delete(self, job_id: str) -> None: ...


def _row_to_job(r: Any) -> Job:
    return Job(
        id=r["id"],
        status=JobStatus(r["status"]),
        spec=GenerationSpec.from_json(json.loads(r["spec"])),
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        progress=r["progress"],
        attempts=r["attempts"],
        result=json.loads(r["result"]) if r["result"] else None,
        details=json.loads(r["details"]) if r["details"] else None,
        moderation=json.loads(r["moderation"]) if r["moderation"] else None,
        api_key_id=r["api_key_id"],
    )


class SQLiteJobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, job: Job) -> None:
        with self._db.transaction() as c:
            c.execute(
                "INSERT INTO jobs (id, status, model, protocol, spec, created_at, progress,"
                " result, details, moderation, api_key_id, finished_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.status.value,
                    job.spec.model,
                    job.spec.protocol,
                    json.dumps(job.spec.to_json()),
                    job.created_at,
                    job.progress,
                    json.dumps(job.result) if job.result else None,
                    json.dumps(job.details) if job.details else None,
                    json.dumps(job.moderation) if job.moderation else None,
                    job.api_key_id,
                    job.finished_at,
                ),
            )

    def get(self, job_id: str) -> Job | None:
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def claim_next(self) -> Job | None:
        with self._db.transaction() as c:
            row = c.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " progress = 0 WHERE id = ?",
                (time.time(), row["id"]),
            )
            r = c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _row_to_job(r)

    def requeue_running(self) -> int:
        with self._db.transaction() as c:
            cur = c.execute("UPDATE jobs SET status = 'queued', progress = 0 WHERE status = 'running'")
        return cur.rowcount

    def set_progress(self, job_id: str, progress: float) -> None:
        with self._db.transaction() as c:
            c.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                (progress, job_id),
            )

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        moderation: list[dict[str, Any]] | None = None,
    ) -> bool:
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, details = ?,"
                " moderation = COALESCE(?, moderation),"
                " progress = CASE WHEN ? = 'ready' THEN 1.0 ELSE progress END,"
                " completions = completions + CASE WHEN ? = 'ready' THEN 1 ELSE 0 END"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (
                    status.value,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(details) if details is not None else None,
                    json.dumps(moderation) if moderation is not None else None,
                    status.value,
                    status.value,
                    job_id,
                    attempt,
                ),
            )
        return cur.rowcount == 1

    def queue_position(self, job_id: str) -> int | None:
        rows = self._db.query(
            "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status = 'queued' AND"
            " (q.created_at < j.created_at OR (q.created_at = j.created_at AND q.rowid < j.rowid)))"
            " AS pos FROM jobs j WHERE j.id = ? AND j.status = 'queued'",
            (job_id,),
        )
        return int(rows[0]["pos"]) if rows else None

    def cancel_queued(self, job_id: str) -> bool:
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = 'error', finished_at = ?, details = ?"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), json.dumps({"error": "cancelled", "steps_done": 0}), job_id),
            )
        return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        with self._db.transaction() as c:
            c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._db.query("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def finished_before(self, cutoff: float) -> list[str]:
        rows = self._db.query(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        )
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        """Forget a job and everything recorded about it (its webhook deliveries too)."""
        with self._db.transaction() as c:
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            c.execute("DELETE FROM webhook_deliveries WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM webhook_attempts WHERE job_id = ?", (job_id,))
