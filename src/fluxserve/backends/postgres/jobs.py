"""Jobs in PostgreSQL: one table is the store and the queue. Workers on any machine claim the
first queued row with ``FOR UPDATE SKIP LOCKED``, and completion is conditional on the claim."""

from __future__ import annotations

import time
import uuid
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.fair import FairShare, Place, place
from fluxserve.records import IdempotencyClaim, Job, JobStatus, Recovery, WebhookTarget
from fluxserve.spec import GenerationSpec
from fluxserve.stores import IDEMPOTENCY_WINDOW_S, IdempotencyConflict, gave_up_error

FAIR_CLOCK = (
    "SELECT fair_start FROM fluxserve_jobs WHERE started_at IS NOT NULL AND fair_start IS NOT NULL"
    " ORDER BY fair_start DESC LIMIT 1"
)
"""The fair clock: the start tag of the latest job taken (see :mod:`fluxserve.fair`)."""
FLOW_END = (
    "SELECT fair_end FROM fluxserve_jobs WHERE fair_flow = %s"
    " AND (started_at IS NOT NULL OR status = 'queued') ORDER BY fair_end DESC LIMIT 1"
)
"""The end tag of a flow's last job, leaving out jobs cancelled before they ran."""


def _first(row: dict[str, Any] | None, column: str) -> float | None:
    return None if row is None else row[column]


def _json(value: Any) -> Jsonb | None:
    return Jsonb(value) if value is not None else None


class _Untaken(Exception):
    """A claim by name that the dispatch refused (raised to roll its transaction back)."""


def _row_to_job(r: dict[str, Any]) -> Job:
    return Job(
        id=r["id"],
        status=JobStatus(r["status"]),
        spec=GenerationSpec.from_json(r["spec"]),
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        progress=r["progress"],
        attempts=r["attempts"],
        result=r["result"],
        details=r["details"],
        moderation=r["moderation"],
        owner=r["owner"],
        routing=r["routing"],
    )


class PostgresJobStore:
    """``JobStore`` and ``JobQueue`` over the ``fluxserve_jobs`` table."""

    def __init__(self, db: PostgresDatabase, batch_delay_s: float = 60.0) -> None:
        self._db = db
        self.batch_delay_s = batch_delay_s

    def create(
        self,
        job: Job,
        idempotency: IdempotencyClaim | None = None,
        webhook: WebhookTarget | None = None,
        fair: FairShare | None = None,
    ) -> Job:
        """Job, idempotency key and webhook in one transaction (see ``JobStore.create``)."""
        now = time.time()
        owner = job.owner or ""
        with self._db.transaction() as c:
            if idempotency is not None:
                c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{owner}\n{idempotency.key}",))
                c.execute(
                    "DELETE FROM fluxserve_idempotency WHERE created_at < %s", (now - IDEMPOTENCY_WINDOW_S,)
                )
                row = c.execute(
                    "SELECT body_hash, job_id FROM fluxserve_idempotency WHERE key = %s AND owner = %s",
                    (idempotency.key, owner),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != idempotency.digest:
                        raise IdempotencyConflict(idempotency.key)
                    existing = c.execute(
                        "SELECT * FROM fluxserve_jobs WHERE id = %s", (row["job_id"],)
                    ).fetchone()
                    if existing is not None:
                        return _row_to_job(existing)
                    c.execute(
                        "DELETE FROM fluxserve_idempotency WHERE key = %s AND owner = %s",
                        (idempotency.key, owner),
                    )
                c.execute(
                    "INSERT INTO fluxserve_idempotency (key, owner, body_hash, job_id, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (idempotency.key, owner, idempotency.digest, job.id, now),
                )
            queued = job.status == JobStatus.QUEUED
            if fair is not None and queued:  # one reader of a flow's last end at a time
                c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fair\n{fair.share}",))

            def flow_end(flow: str) -> float | None:
                return _first(c.execute(FLOW_END, (flow,)).fetchone(), "fair_end")

            where = place(
                created_at=job.created_at,
                interactive=job.spec.interactive,
                images=job.spec.num_images,
                batch_delay_s=self.batch_delay_s,
                fair=fair if queued else None,
                clock=lambda: _first(c.execute(FAIR_CLOCK).fetchone(), "fair_start"),
                flow_end=flow_end,
            )
            c.execute(
                "INSERT INTO fluxserve_jobs (id, status, model, protocol, spec, created_at, sort_at,"
                " progress, result, details, moderation, owner, finished_at, fair_flow, fair_start,"
                " fair_end, route, routing)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.id,
                    job.status.value,
                    job.spec.model,
                    job.spec.protocol,
                    Jsonb(job.spec.to_json()),
                    job.created_at,
                    where.sort_at,
                    job.progress,
                    _json(job.result),
                    _json(job.details),
                    _json(job.moderation),
                    job.owner,
                    job.finished_at,
                    where.flow,
                    where.start,
                    where.end,
                    job.route,
                    _json(job.routing),
                ),
            )
            if webhook is not None:
                c.execute(
                    "INSERT INTO fluxserve_webhook_deliveries (job_id, delivery_id, url, secret, base_url,"
                    " state, attempts, next_at, created_at) VALUES (%s, %s, %s, %s, %s, 'waiting', 0, 0, %s)",
                    (job.id, str(uuid.uuid4()), webhook.url, webhook.secret, webhook.base_url, now),
                )
            if queued:
                self._enqueued(c, job, where)
        return job

    def _enqueued(self, c: Connection[dict[str, Any]], job: Job, where: Place) -> None:
        """Called inside the transaction that creates a queued job, with its place in the
        queue (dispatch hooks in here)."""

    def claim(self, job_id: str, worker: str) -> Job | None:
        """Mark the job running under one more attempt (see ``JobClaims.claim``)."""
        with self._db.transaction() as c:
            row = c.execute(
                "UPDATE fluxserve_jobs SET status = 'running', attempts = attempts + 1, worker = %s,"
                " started_at = %s, progress = 0 WHERE id = %s AND status IN ('queued', 'running')"
                " RETURNING *",
                (worker, time.time(), job_id),
            ).fetchone()
        return _row_to_job(row) if row else None

    def give_up(self, job_id: str) -> bool:
        """End a job started too often as Error (see ``JobClaims.give_up``)."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_jobs SET status = 'error', finished_at = %s,"
                " details = jsonb_build_object('error', %s::text)"
                " WHERE id = %s AND status IN ('queued', 'running')",
                (time.time(), gave_up_error(self._attempts(c, job_id)), job_id),
            )
            return cur.rowcount == 1

    @staticmethod
    def _attempts(c: Connection[dict[str, Any]], job_id: str) -> int:
        row = c.execute("SELECT attempts FROM fluxserve_jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        return int(row["attempts"]) if row else 0

    def requeue(self, job_ids: list[str]) -> None:
        """Show jobs whose worker is gone as queued again (their dispatch was retried)."""
        with self._db.transaction() as c:
            c.execute(
                "UPDATE fluxserve_jobs SET status = 'queued', progress = 0"
                " WHERE id = ANY(%s) AND status = 'running'",
                (job_ids,),
            )

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        rows = self._db.query("SELECT * FROM fluxserve_jobs WHERE id = %s", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def list_owned(self, owner: str | None, limit: int, before: float | None = None) -> list[Job]:
        """``owner``'s jobs, newest first (see ``JobStore.list_owned``)."""
        rows = self._db.query(
            "SELECT * FROM fluxserve_jobs WHERE owner IS NOT DISTINCT FROM %s::text"
            " AND created_at < %s ORDER BY created_at DESC, seq DESC LIMIT %s",
            (owner, before if before is not None else float("inf"), max(0, limit)),
        )
        return [_row_to_job(r) for r in rows]

    def claim_next(self, route: str | None = None) -> Job | None:
        """Claim the first queued job of ``route``'s lane; concurrent workers skip rows another
        one is claiming."""
        with self._db.transaction() as c:
            row = c.execute(
                "UPDATE fluxserve_jobs SET status = 'running', attempts = attempts + 1,"
                " started_at = %s, progress = 0 WHERE id = ("
                "  SELECT id FROM fluxserve_jobs WHERE status = 'queued'"
                "  AND route IS NOT DISTINCT FROM %s::text ORDER BY sort_at, seq"
                "  LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (time.time(), route),
            ).fetchone()
        return _row_to_job(row) if row else None

    def peek(self, limit: int) -> list[Job]:
        """The first ``limit`` queued jobs of the local queue, left queued."""
        rows = self._db.query(
            "SELECT * FROM fluxserve_jobs WHERE status = 'queued' AND route IS NULL"
            " ORDER BY sort_at, seq LIMIT %s",
            (max(0, limit),),
        )
        return [_row_to_job(r) for r in rows]

    def claim_queued(self, job_id: str, worker: str) -> Job | None:
        """Mark this job running under ``worker`` if it is still queued (and its dispatch, if
        any, lets it be taken: :meth:`_take_dispatched`)."""
        try:
            with self._db.transaction() as c:
                row = c.execute(
                    "UPDATE fluxserve_jobs SET status = 'running', attempts = attempts + 1, worker = %s,"
                    " started_at = %s, progress = 0 WHERE id = %s AND status = 'queued' RETURNING *",
                    (worker, time.time(), job_id),
                ).fetchone()
                if row is not None and not self._take_dispatched(c, job_id):
                    raise _Untaken  # rolls the claim back
        except _Untaken:
            return None
        return _row_to_job(row) if row else None

    def _take_dispatched(self, c: Connection[dict[str, Any]], job_id: str) -> bool:
        """Called inside the transaction that claims a queued job by name (dispatch hooks in
        here: the job's own task must not be handed to another worker too)."""
        return True

    def position(self, job_id: str) -> int | None:
        """Queued jobs ahead of this one."""
        rows = self._db.query(
            "SELECT (SELECT count(*) FROM fluxserve_jobs q WHERE q.status = 'queued'"
            " AND q.route IS NOT DISTINCT FROM j.route AND (q.sort_at, q.seq) < (j.sort_at, j.seq)) AS pos"
            " FROM fluxserve_jobs j WHERE j.id = %s AND j.status = 'queued'",
            (job_id,),
        )
        return int(rows[0]["pos"]) if rows else None

    def reroute(self, job_id: str, attempt: int, routing: dict[str, Any]) -> bool:
        """Put a job its upstream did not accept back in the local queue, at its place, if
        ``attempt`` still holds it (with dispatch: a task on its model's queue, same transaction)."""
        with self._db.transaction() as c:
            row = c.execute(
                "UPDATE fluxserve_jobs SET status = 'queued', progress = 0, route = NULL, routing = %s"
                " WHERE id = %s AND status = 'running' AND attempts = %s RETURNING *",
                (Jsonb(routing), job_id, attempt),
            ).fetchone()
            if row is None:
                return False
            self._enqueued(c, _row_to_job(row), Place(float(row["sort_at"])))
        return True

    def local_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """``model``'s queued and running jobs on the local queue, and the engine seconds of
        its last ``recent`` jobs made here."""
        active = self._db.query(
            "SELECT count(*) AS n FROM fluxserve_jobs WHERE model = %s AND route IS NULL"
            " AND status IN ('queued', 'running')",
            (model,),
        )[0]["n"]
        rows = self._db.query(
            "SELECT (result->>'engine_s')::float AS s FROM fluxserve_jobs WHERE model = %s"
            " AND route IS NULL AND status = 'ready' ORDER BY finished_at DESC LIMIT %s",
            (model, recent),
        )
        return int(active), [float(r["s"]) for r in rows if r["s"] is not None]

    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return int(self._db.query("SELECT count(*) AS n FROM fluxserve_jobs WHERE status = 'queued'")[0]["n"])

    def recover(self, max_attempts: int) -> Recovery:
        """Requeue jobs left running, or end those tried ``max_attempts`` times."""
        now = time.time()
        with self._db.transaction() as c:
            rows = c.execute(
                "SELECT id, attempts FROM fluxserve_jobs WHERE status = 'running' FOR UPDATE"
            ).fetchall()
            requeued = [r["id"] for r in rows if r["attempts"] < max_attempts]
            failed = [r for r in rows if r["attempts"] >= max_attempts]
            for job_id in requeued:
                c.execute(
                    "UPDATE fluxserve_jobs SET status = 'queued', progress = 0 WHERE id = %s", (job_id,)
                )
            for r in failed:
                c.execute(
                    "UPDATE fluxserve_jobs SET status = 'error', finished_at = %s, details = %s"
                    " WHERE id = %s",
                    (now, Jsonb({"error": gave_up_error(r["attempts"])}), r["id"]),
                )
        return Recovery(requeued, [r["id"] for r in failed])

    def set_progress(self, job_id: str, progress: float) -> None:
        """Record progress of a running job."""
        with self._db.transaction() as c:
            c.execute(
                "UPDATE fluxserve_jobs SET progress = %s WHERE id = %s AND status = 'running'",
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
        ready = status == JobStatus.READY
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_jobs SET status = %s, finished_at = %s, result = %s, details = %s,"
                " moderation = COALESCE(%s, moderation),"
                " progress = CASE WHEN %s THEN 1.0 ELSE progress END,"
                " completions = completions + CASE WHEN %s THEN 1 ELSE 0 END"
                " WHERE id = %s AND status = 'running' AND attempts = %s",
                (
                    status.value,
                    time.time(),
                    _json(result),
                    _json(details),
                    _json(moderation),
                    ready,
                    ready,
                    job_id,
                    attempt,
                ),
            )
            return cur.rowcount == 1

    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_jobs SET status = 'error', finished_at = %s, details = %s"
                " WHERE id = %s AND status = 'queued'",
                (time.time(), Jsonb({"error": "cancelled", "steps_done": 0}), job_id),
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation."""
        with self._db.transaction() as c:
            c.execute(
                "UPDATE fluxserve_jobs SET cancel_requested = TRUE WHERE id = %s AND status = 'running'",
                (job_id,),
            )

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job is flagged for cancellation."""
        rows = self._db.query("SELECT cancel_requested FROM fluxserve_jobs WHERE id = %s", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs that ended before ``cutoff``."""
        rows = self._db.query(
            "SELECT id FROM fluxserve_jobs WHERE finished_at IS NOT NULL AND finished_at < %s", (cutoff,)
        )
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        """Forget a job, its webhook delivery and attempts, and its idempotency keys."""
        with self._db.transaction() as c:
            c.execute("DELETE FROM fluxserve_jobs WHERE id = %s", (job_id,))
            c.execute("DELETE FROM fluxserve_webhook_deliveries WHERE job_id = %s", (job_id,))
            c.execute("DELETE FROM fluxserve_webhook_attempts WHERE job_id = %s", (job_id,))
            c.execute("DELETE FROM fluxserve_idempotency WHERE job_id = %s", (job_id,))
