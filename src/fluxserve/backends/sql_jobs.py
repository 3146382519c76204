"""Jobs in a SQL database (SQLite or PostgreSQL): one table is both the store and the queue. A
worker claims the first queued row in one transaction, and completion is conditional on the
attempt it holds. The statements are written once; a :class:`~fluxserve.backends.sql_dialect.Dialect`
says where the two databases differ, and each backend's store adds what only it has."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fluxserve.backends.sql_dialect import Dialect
from fluxserve.fair import FairShare, Place, place
from fluxserve.records import IdempotencyClaim, Job, JobStatus, Recovery, WebhookTarget
from fluxserve.spec import GenerationSpec
from fluxserve.stores import IDEMPOTENCY_WINDOW_S, IdempotencyConflict, SqlDatabase, gave_up_error

CANCELLED = {"error": "cancelled", "steps_done": 0}
"""``details`` of a job cancelled while it was queued."""


def row_to_job(r: Any, dialect: Dialect) -> Job:
    """A jobs table row as a :class:`~fluxserve.records.Job`."""
    return Job(
        id=r["id"],
        status=JobStatus(r["status"]),
        spec=GenerationSpec.from_json(dialect.decode_json(r["spec"])),
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        progress=r["progress"],
        attempts=r["attempts"],
        result=dialect.decode_json(r["result"]),
        details=dialect.decode_json(r["details"]),
        moderation=dialect.decode_json(r["moderation"]),
        owner=r[dialect.owner_column],
        routing=dialect.decode_json(r["routing"]),
    )


def _first(row: Any, column: str) -> float | None:
    return None if row is None else row[column]


class _Untaken(Exception):
    """A claim by name that the dispatch refused (raised to roll its transaction back)."""


class SqlJobStore:
    """:class:`~fluxserve.stores.JobStore` and ``JobQueue`` over the jobs table of ``db``.

    Subclasses hook into two transactions: :meth:`_enqueued` (a job became queued) and
    :meth:`_take_dispatched` (a queued job is claimed by name)."""

    def __init__(self, db: SqlDatabase, dialect: Dialect, batch_delay_s: float = 60.0) -> None:
        self._db = db
        self._d = dialect
        self.batch_delay_s = batch_delay_s
        self._jobs = dialect.table("jobs")
        self._idempotency = dialect.table("idempotency")
        self._deliveries = dialect.table("webhook_deliveries")
        self._attempt_rows = dialect.table("webhook_attempts")

    def _row(self, r: Any) -> Job:
        return row_to_job(r, self._d)

    def _query(self, text: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return list(self._db.query(self._d.sql(text), params))

    def _exec(self, c: Any, text: str, params: tuple[Any, ...] = ()) -> Any:
        return c.execute(self._d.sql(text), params)

    def _update_returning(self, c: Any, text: str, params: tuple[Any, ...], job_id: str) -> Any:
        """Run an UPDATE of one job and return its row as it is now, or None if nothing
        matched (without RETURNING: read back in the same transaction)."""
        if self._d.returning:
            return self._exec(c, text + " RETURNING *", params).fetchone()
        if self._exec(c, text, params).rowcount != 1:
            return None
        return self._exec(c, f"SELECT * FROM {self._jobs} WHERE id = ?", (job_id,)).fetchone()

    def create(
        self,
        job: Job,
        idempotency: IdempotencyClaim | None = None,
        webhook: WebhookTarget | None = None,
        fair: FairShare | None = None,
    ) -> Job:
        """See ``JobStore.create``: job, idempotency key and webhook in one transaction."""
        d = self._d
        now = time.time()
        owner = job.owner or ""
        with self._db.transaction() as c:
            if idempotency is not None:
                self._exec(
                    c, f"DELETE FROM {self._idempotency} WHERE created_at < ?", (now - IDEMPOTENCY_WINDOW_S,)
                )
                row = self._exec(
                    c,
                    f"SELECT body_hash, job_id FROM {self._idempotency} WHERE key = ? AND owner = ?",
                    (idempotency.key, owner),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != idempotency.digest:
                        raise IdempotencyConflict(idempotency.key)
                    existing = self._exec(
                        c, f"SELECT * FROM {self._jobs} WHERE id = ?", (row["job_id"],)
                    ).fetchone()
                    if existing is not None:
                        return self._row(existing)
                    # Its job was swept (or a reservation of an older version was left): stale.
                    self._exec(
                        c,
                        f"DELETE FROM {self._idempotency} WHERE key = ? AND owner = ?",
                        (idempotency.key, owner),
                    )
                self._exec(
                    c,
                    f"INSERT INTO {self._idempotency} (key, owner, body_hash, job_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (idempotency.key, owner, idempotency.digest, job.id, now),
                )
            queued = job.status == JobStatus.QUEUED
            if fair is not None and queued and d.flow_lock is not None:
                self._exec(c, d.flow_lock, (f"fair\n{fair.share}",))
            clock = (
                f"SELECT fair_start FROM {self._jobs} WHERE started_at IS NOT NULL"
                " AND fair_start IS NOT NULL ORDER BY fair_start DESC LIMIT 1"
            )  # the fair clock: the start tag of the latest job taken (see fluxserve.fair)
            flow_end = (
                f"SELECT fair_end FROM {self._jobs} WHERE fair_flow = ?"
                " AND (started_at IS NOT NULL OR status = 'queued') ORDER BY fair_end DESC LIMIT 1"
            )  # the end tag of a flow's last job, leaving out jobs cancelled before they ran
            where = place(
                created_at=job.created_at,
                interactive=job.spec.interactive,
                images=job.spec.num_images,
                batch_delay_s=self.batch_delay_s,
                fair=fair if queued else None,
                clock=lambda: _first(self._exec(c, clock).fetchone(), "fair_start"),
                flow_end=lambda flow: _first(self._exec(c, flow_end, (flow,)).fetchone(), "fair_end"),
            )
            self._exec(
                c,
                f"INSERT INTO {self._jobs} (id, status, model, protocol, spec, created_at, sort_at,"
                f" progress, result, details, moderation, {d.owner_column}, finished_at, fair_flow,"
                " fair_start, fair_end, route, routing)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.status.value,
                    job.spec.model,
                    job.spec.protocol,
                    d.json(job.spec.to_json()),
                    job.created_at,
                    where.sort_at,
                    job.progress,
                    d.json(job.result),
                    d.json(job.details),
                    d.json(job.moderation),
                    job.owner,
                    job.finished_at,
                    where.flow,
                    where.start,
                    where.end,
                    job.route,
                    d.json(job.routing),
                ),
            )
            if webhook is not None:
                self._exec(
                    c,
                    f"INSERT INTO {self._deliveries} (job_id, delivery_id, url, secret, base_url, state,"
                    " attempts, next_at, created_at) VALUES (?, ?, ?, ?, ?, 'waiting', 0, 0, ?)",
                    (job.id, str(uuid.uuid4()), webhook.url, webhook.secret, webhook.base_url, now),
                )
            if queued:
                self._enqueued(c, job, where)
        return job

    def _enqueued(self, c: Any, job: Job, where: Place) -> None:
        """Called inside the transaction that makes a job queued (created, or rerouted back to
        the local queue), with its place in the queue (dispatch hooks in here)."""

    def _take_dispatched(self, c: Any, job_id: str) -> bool:
        """Called inside the transaction that claims a queued job by name; False rolls the
        claim back (dispatch hooks in here: the job's own task must not be handed to another
        worker too)."""
        return True

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        rows = self._query(f"SELECT * FROM {self._jobs} WHERE id = ?", (job_id,))
        return self._row(rows[0]) if rows else None

    def list_owned(self, owner: str | None, limit: int, before: float | None = None) -> list[Job]:
        """``owner``'s jobs, newest first (see ``JobStore.list_owned``)."""
        d = self._d
        rows = self._query(
            f"SELECT * FROM {self._jobs} WHERE {d.same(d.owner_column)} AND created_at < ?"
            f" ORDER BY created_at DESC, {d.row_order} DESC LIMIT ?",
            (owner, before if before is not None else float("inf"), max(0, limit)),
        )
        return [self._row(r) for r in rows]

    def _claim(self, c: Any, job_id: str, worker: str | None = None, only_queued: bool = False) -> Any:
        """Mark the job running under one more attempt; its row, or None if it did not match."""
        sets = "status = 'running', attempts = attempts + 1, started_at = ?, progress = 0"
        params: tuple[Any, ...] = (time.time(),)
        if worker is not None and self._d.worker_column:  # SQLite: one process, no worker to name
            sets, params = sets + ", worker = ?", (*params, worker)
        where = "id = ? AND status = 'queued'" if only_queued else "id = ?"
        return self._update_returning(
            c, f"UPDATE {self._jobs} SET {sets} WHERE {where}", (*params, job_id), job_id
        )

    def claim_next(self, route: str | None = None) -> Job | None:
        """Mark the first queued job of ``route``'s lane (by place in the queue) running and
        return it; concurrent workers skip a row another one is claiming."""
        d = self._d
        with self._db.transaction() as c:
            row = self._exec(
                c,
                f"SELECT id FROM {self._jobs} WHERE status = 'queued' AND {d.same('route')}"
                f" ORDER BY {d.queue_order()} LIMIT 1{d.skip_locked}",
                (route,),
            ).fetchone()
            claimed = None if row is None else self._claim(c, row["id"])
        return self._row(claimed) if claimed is not None else None

    def peek(self, limit: int) -> list[Job]:
        """The first ``limit`` queued jobs of the local queue, left queued."""
        rows = self._query(
            f"SELECT * FROM {self._jobs} WHERE status = 'queued' AND route IS NULL"
            f" ORDER BY {self._d.queue_order()} LIMIT ?",
            (max(0, limit),),
        )
        return [self._row(r) for r in rows]

    def claim_queued(self, job_id: str, worker: str) -> Job | None:
        """Mark this job running under ``worker`` if it is still queued (and its dispatch, if
        any, lets it be taken: :meth:`_take_dispatched`)."""
        try:
            with self._db.transaction() as c:
                row = self._claim(c, job_id, worker, only_queued=True)
                if row is not None and not self._take_dispatched(c, job_id):
                    raise _Untaken  # rolls the claim back
        except _Untaken:
            return None
        return self._row(row) if row is not None else None

    def position(self, job_id: str) -> int | None:
        """Queued jobs ahead of this one."""
        d = self._d
        rows = self._query(
            f"SELECT (SELECT COUNT(*) FROM {self._jobs} q WHERE q.status = 'queued'"
            f" AND {d.same('q.route', 'j.route')} AND ({d.queue_order('q')}) < ({d.queue_order('j')}))"
            f" AS pos FROM {self._jobs} j WHERE j.id = ? AND j.status = 'queued'",
            (job_id,),
        )
        return int(rows[0]["pos"]) if rows else None

    def reroute(self, job_id: str, attempt: int, routing: dict[str, Any]) -> bool:
        """Put a job its upstream did not accept back in the local queue, at its place, if
        ``attempt`` still holds it (with dispatch: a task on its model's queue, same transaction)."""
        with self._db.transaction() as c:
            row = self._update_returning(
                c,
                f"UPDATE {self._jobs} SET status = 'queued', progress = 0, route = NULL, routing = ?"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (self._d.encode_json(routing), job_id, attempt),
                job_id,
            )
            if row is None:
                return False
            sort_at = row["sort_at"] if row["sort_at"] is not None else row["created_at"]
            self._enqueued(c, self._row(row), Place(float(sort_at)))
        return True

    def local_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """``model``'s queued and running jobs on the local queue, and the engine seconds of
        its last ``recent`` jobs made here."""
        return self._lane_load("route IS NULL", model, whole_lane=False, recent=recent)

    def upstream_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """Queued and running jobs in the upstream lane (every model's), and the engine seconds
        of ``model``'s last ``recent`` jobs made there."""
        return self._lane_load("route = 'upstream'", model, whole_lane=True, recent=recent)

    def _lane_load(self, lane: str, model: str, whole_lane: bool, recent: int) -> tuple[int, list[float]]:
        """Active jobs in ``lane`` (a condition; only ``model``'s unless ``whole_lane``), and the
        engine seconds of ``model``'s last ``recent`` ready jobs there."""
        mine, params = ("", ()) if whole_lane else (" AND model = ?", (model,))
        active = self._query(
            f"SELECT COUNT(*) AS n FROM {self._jobs} WHERE {lane}{mine} AND status IN ('queued', 'running')",
            params,
        )[0]["n"]
        rows = self._query(
            f"SELECT {self._d.number('result', 'engine_s')} AS s FROM {self._jobs} WHERE model = ?"
            f" AND {lane} AND status = 'ready' ORDER BY finished_at DESC LIMIT ?",
            (model, recent),
        )
        return int(active), [float(r["s"]) for r in rows if r["s"] is not None]

    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return int(self._query(f"SELECT COUNT(*) AS n FROM {self._jobs} WHERE status = 'queued'")[0]["n"])

    def recover(self, max_attempts: int) -> Recovery:
        """Requeue jobs left running, or end those already tried ``max_attempts`` times."""
        now = time.time()
        with self._db.transaction() as c:
            rows = self._exec(
                c, f"SELECT id, attempts FROM {self._jobs} WHERE status = 'running'{self._d.lock_rows}"
            ).fetchall()
            requeued = [r["id"] for r in rows if r["attempts"] < max_attempts]
            failed = [r for r in rows if r["attempts"] >= max_attempts]
            for job_id in requeued:
                self._requeue_left_running(c, job_id)
            for r in failed:
                self._exec(
                    c,
                    f"UPDATE {self._jobs} SET status = 'error', finished_at = ?, details = ? WHERE id = ?",
                    (now, self._d.encode_json({"error": gave_up_error(r["attempts"])}), r["id"]),
                )
        return Recovery(requeued, [r["id"] for r in failed])

    def _requeue_left_running(self, c: Any, job_id: str) -> None:
        """Put a job a dead process left running back in the queue (in :meth:`recover`)."""
        self._exec(c, f"UPDATE {self._jobs} SET status = 'queued', progress = 0 WHERE id = ?", (job_id,))

    def set_progress(self, job_id: str, progress: float) -> None:
        """Record progress of a running job."""
        with self._db.transaction() as c:
            self._exec(
                c,
                f"UPDATE {self._jobs} SET progress = ? WHERE id = ? AND status = 'running'",
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
        d = self._d
        ready = status == JobStatus.READY
        with self._db.transaction() as c:
            cur = self._exec(
                c,
                f"UPDATE {self._jobs} SET status = ?, finished_at = ?, result = ?, details = ?,"
                " moderation = COALESCE(?, moderation),"
                " progress = CASE WHEN ? THEN 1.0 ELSE progress END,"
                " completions = completions + CASE WHEN ? THEN 1 ELSE 0 END"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (
                    status.value,
                    time.time(),
                    d.json(result),
                    d.json(details),
                    d.json(moderation),
                    ready,
                    ready,
                    job_id,
                    attempt,
                ),
            )
            return bool(cur.rowcount == 1)

    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled."""
        with self._db.transaction() as c:
            cur = self._exec(
                c,
                f"UPDATE {self._jobs} SET status = 'error', finished_at = ?, details = ?"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), self._d.encode_json(CANCELLED), job_id),
            )
            return bool(cur.rowcount == 1)

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation."""
        with self._db.transaction() as c:
            self._exec(
                c,
                f"UPDATE {self._jobs} SET cancel_requested = ? WHERE id = ? AND status = 'running'",
                (True, job_id),
            )

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job is flagged for cancellation."""
        rows = self._query(f"SELECT cancel_requested FROM {self._jobs} WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs that ended before ``cutoff``."""
        rows = self._query(
            f"SELECT id FROM {self._jobs} WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        )
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        """Forget a job, its webhook delivery and attempts, and its idempotency keys."""
        with self._db.transaction() as c:
            self._exec(c, f"DELETE FROM {self._jobs} WHERE id = ?", (job_id,))
            self._exec(c, f"DELETE FROM {self._deliveries} WHERE job_id = ?", (job_id,))
            self._exec(c, f"DELETE FROM {self._attempt_rows} WHERE job_id = ?", (job_id,))
            self._exec(c, f"DELETE FROM {self._idempotency} WHERE job_id = ?", (job_id,))
