"""Jobs in SQLite: the jobs table is both the store and the queue. A worker claims the first
queued row in one transaction, and completion is conditional on the claim it holds."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

from fluxserve.backends.sqlite.db import Database
from fluxserve.fair import FairShare, place
from fluxserve.records import IdempotencyClaim, Job, JobStatus, Recovery, WebhookTarget
from fluxserve.spec import GenerationSpec
from fluxserve.stores import IDEMPOTENCY_WINDOW_S, REQUEUED_LOCALLY, IdempotencyConflict, gave_up_error

CANCELLED = json.dumps({"error": "cancelled", "steps_done": 0})


FAIR_CLOCK = (
    "SELECT fair_start FROM jobs WHERE started_at IS NOT NULL AND fair_start IS NOT NULL"
    " ORDER BY fair_start DESC LIMIT 1"
)
"""The fair clock: the start tag of the latest job taken (see :mod:`fluxserve.fair`)."""
FLOW_END = (
    "SELECT fair_end FROM jobs WHERE fair_flow = ? AND (started_at IS NOT NULL OR status = 'queued')"
    " ORDER BY fair_end DESC LIMIT 1"
)
"""The end tag of a flow's last job, leaving out jobs cancelled before they ran."""


def _first(row: sqlite3.Row | None) -> float | None:
    return None if row is None else row[0]


def _dumps(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _row_to_job(r: sqlite3.Row) -> Job:
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
        owner=r["api_key_id"],
        routing=json.loads(r["routing"]) if r["routing"] else None,
    )


class SQLiteJobStore:
    """:class:`~fluxserve.stores.JobStore` and ``JobQueue`` over one table."""

    def __init__(self, db: Database, batch_delay_s: float = 60.0) -> None:
        self._db = db
        self.batch_delay_s = batch_delay_s

    def create(
        self,
        job: Job,
        idempotency: IdempotencyClaim | None = None,
        webhook: WebhookTarget | None = None,
        fair: FairShare | None = None,
    ) -> Job:
        """See ``JobStore.create``: job, idempotency key and webhook in one transaction."""
        now = time.time()
        owner = job.owner or ""
        with self._db.transaction() as c:
            if idempotency is not None:
                c.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_WINDOW_S,))
                row = c.execute(
                    "SELECT body_hash, job_id FROM idempotency WHERE key = ? AND owner = ?",
                    (idempotency.key, owner),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != idempotency.digest:
                        raise IdempotencyConflict(idempotency.key)
                    existing = c.execute("SELECT * FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()
                    if existing is not None:
                        return _row_to_job(existing)
                    # Its job was swept (or a reservation of an older version was left): stale.
                    c.execute("DELETE FROM idempotency WHERE key = ? AND owner = ?", (idempotency.key, owner))
                c.execute(
                    "INSERT INTO idempotency (key, owner, body_hash, job_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (idempotency.key, owner, idempotency.digest, job.id, now),
                )
            where = place(
                created_at=job.created_at,
                interactive=job.spec.interactive,
                images=job.spec.num_images,
                batch_delay_s=self.batch_delay_s,
                fair=fair if job.status == JobStatus.QUEUED else None,
                clock=lambda: _first(c.execute(FAIR_CLOCK).fetchone()),
                flow_end=lambda flow: _first(c.execute(FLOW_END, (flow,)).fetchone()),
            )
            c.execute(
                "INSERT INTO jobs (id, status, model, protocol, spec, created_at, sort_at, progress,"
                " result, details, moderation, api_key_id, finished_at, fair_flow, fair_start,"
                " fair_end, route, routing) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.status.value,
                    job.spec.model,
                    job.spec.protocol,
                    json.dumps(job.spec.to_json()),
                    job.created_at,
                    where.sort_at,
                    job.progress,
                    _dumps(job.result),
                    _dumps(job.details),
                    _dumps(job.moderation),
                    job.owner,
                    job.finished_at,
                    where.flow,
                    where.start,
                    where.end,
                    job.route,
                    _dumps(job.routing),
                ),
            )
            if webhook is not None:
                c.execute(
                    "INSERT INTO webhook_deliveries (job_id, delivery_id, url, secret, base_url, state,"
                    " attempts, next_at, created_at) VALUES (?, ?, ?, ?, ?, 'waiting', 0, 0, ?)",
                    (job.id, str(uuid.uuid4()), webhook.url, webhook.secret, webhook.base_url, now),
                )
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def list_owned(self, owner: str | None, limit: int, before: float | None = None) -> list[Job]:
        """``owner``'s jobs, newest first (see ``JobStore.list_owned``)."""
        rows = self._db.query(
            "SELECT * FROM jobs WHERE api_key_id IS ? AND created_at < ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (owner, before if before is not None else float("inf"), max(0, limit)),
        )
        return [_row_to_job(r) for r in rows]

    def claim_next(self, route: str | None = None) -> Job | None:
        """Mark the first queued job of ``route``'s lane (by place in the queue) running and
        return it."""
        with self._db.transaction() as c:
            row = c.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND route IS ?"
                " ORDER BY COALESCE(sort_at, created_at), rowid LIMIT 1",
                (route,),
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

    def peek(self, limit: int) -> list[Job]:
        """The first ``limit`` queued jobs of the local queue, left queued."""
        rows = self._db.query(
            "SELECT * FROM jobs WHERE status = 'queued' AND route IS NULL"
            " ORDER BY COALESCE(sort_at, created_at), rowid LIMIT ?",
            (max(0, limit),),
        )
        return [_row_to_job(r) for r in rows]

    def claim_queued(self, job_id: str, worker: str) -> Job | None:
        """Mark this job running if it is still queued."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " progress = 0 WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            if cur.rowcount != 1:
                return None
            r = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(r)

    def position(self, job_id: str) -> int | None:
        """Queued jobs ahead of this one."""
        rows = self._db.query(
            "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status = 'queued' AND q.route IS j.route"
            " AND (COALESCE(q.sort_at, q.created_at) < COALESCE(j.sort_at, j.created_at) OR"
            " (COALESCE(q.sort_at, q.created_at) = COALESCE(j.sort_at, j.created_at)"
            " AND q.rowid < j.rowid))) AS pos FROM jobs j WHERE j.id = ? AND j.status = 'queued'",
            (job_id,),
        )
        return int(rows[0]["pos"]) if rows else None

    def reroute(self, job_id: str, attempt: int, routing: dict[str, Any]) -> bool:
        """Put a job its upstream did not accept back in the local queue, at its place, if
        ``attempt`` still holds it."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = 'queued', progress = 0, route = NULL, routing = ?"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (json.dumps(routing), job_id, attempt),
            )
        return cur.rowcount == 1

    def local_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """``model``'s queued and running jobs on the local queue, and the engine seconds of
        its last ``recent`` jobs made here."""
        active = self._db.query(
            "SELECT COUNT(*) AS n FROM jobs WHERE model = ? AND route IS NULL"
            " AND status IN ('queued', 'running')",
            (model,),
        )[0]["n"]
        rows = self._db.query(
            "SELECT json_extract(result, '$.engine_s') AS s FROM jobs WHERE model = ?"
            " AND route IS NULL AND status = 'ready' ORDER BY finished_at DESC LIMIT ?",
            (model, recent),
        )
        return int(active), [float(r["s"]) for r in rows if r["s"] is not None]

    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return int(self._db.query("SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'")[0]["n"])

    def recover(self, max_attempts: int) -> Recovery:
        """Requeue jobs left running, or end those already tried ``max_attempts`` times."""
        now = time.time()
        with self._db.transaction() as c:
            rows = c.execute("SELECT id, attempts FROM jobs WHERE status = 'running'").fetchall()
            requeued = [r["id"] for r in rows if r["attempts"] < max_attempts]
            failed = [r["id"] for r in rows if r["attempts"] >= max_attempts]
            for job_id in requeued:  # on the local queue: the upstream lane may be gone
                c.execute(
                    "UPDATE jobs SET status = 'queued', progress = 0, route = NULL, routing = CASE"
                    " WHEN route IS NULL THEN routing ELSE json_set(routing, '$.served_by', 'local',"
                    " '$.reason', ?) END WHERE id = ?",
                    (REQUEUED_LOCALLY, job_id),
                )
            for r in rows:
                if r["id"] in failed:
                    details = {"error": gave_up_error(r["attempts"])}
                    c.execute(
                        "UPDATE jobs SET status = 'error', finished_at = ?, details = ? WHERE id = ?",
                        (now, json.dumps(details), r["id"]),
                    )
        return Recovery(requeued, failed)

    def set_progress(self, job_id: str, progress: float) -> None:
        """Record progress of a running job."""
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
        """End a running job if ``attempt`` still holds it."""
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
                    _dumps(result),
                    _dumps(details),
                    _dumps(moderation),
                    status.value,
                    status.value,
                    job_id,
                    attempt,
                ),
            )
        return cur.rowcount == 1

    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = 'error', finished_at = ?, details = ?"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), CANCELLED, job_id),
            )
        return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation."""
        with self._db.transaction() as c:
            c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job is flagged for cancellation."""
        rows = self._db.query("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs that ended before ``cutoff``."""
        rows = self._db.query(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        )
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        """Forget a job, its webhook delivery and attempts, and its idempotency keys."""
        with self._db.transaction() as c:
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            c.execute("DELETE FROM webhook_deliveries WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM webhook_attempts WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
