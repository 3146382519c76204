"""Jobs in PostgreSQL: the shared SQL job store (:mod:`fluxserve.backends.sql_jobs`) on the
``fluxserve_jobs`` table. Workers on any machine claim the first queued row with
``FOR UPDATE SKIP LOCKED``, and completion is conditional on the claim. Claims by name for
dispatch (:class:`~fluxserve.stores.JobClaims`) are PostgreSQL's alone."""

from __future__ import annotations

import time
from typing import Any

from psycopg import Connection

from fluxserve.backends.postgres.db import POSTGRES, PostgresDatabase
from fluxserve.backends.sql_jobs import SqlJobStore
from fluxserve.records import Job
from fluxserve.stores import REQUEUED_LOCALLY, gave_up_error


class PostgresJobStore(SqlJobStore):
    """``JobStore``, ``JobQueue`` and ``JobClaims`` over the ``fluxserve_jobs`` table."""

    def __init__(self, db: PostgresDatabase, batch_delay_s: float = 60.0) -> None:
        super().__init__(db, POSTGRES, batch_delay_s)

    def _requeue_left_running(self, c: Any, job_id: str) -> None:
        """Requeue on the local queue, as SQLite's store does: the upstream lane may be gone, and
        the routing says so. (With dispatch, recovery is the reaper's; see ``dispatch.py``.)"""
        c.execute(
            "UPDATE fluxserve_jobs SET status = 'queued', progress = 0, route = NULL, routing = CASE"
            " WHEN route IS NULL THEN routing ELSE COALESCE(routing, '{}'::jsonb)"
            " || jsonb_build_object('served_by', 'local', 'reason', %s::text) END WHERE id = %s",
            (REQUEUED_LOCALLY, job_id),
        )

    def claim(self, job_id: str, worker: str) -> Job | None:
        """Mark the job running under one more attempt (see ``JobClaims.claim``)."""
        with self._db.transaction() as c:
            row = c.execute(
                "UPDATE fluxserve_jobs SET status = 'running', attempts = attempts + 1, worker = %s,"
                " started_at = %s, progress = 0 WHERE id = %s AND status IN ('queued', 'running')"
                " RETURNING *",
                (worker, time.time(), job_id),
            ).fetchone()
        return self._row(row) if row else None

    def give_up(self, job_id: str) -> bool:
        """End a job started too often as Error (see ``JobClaims.give_up``)."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_jobs SET status = 'error', finished_at = %s,"
                " details = jsonb_build_object('error', %s::text)"
                " WHERE id = %s AND status IN ('queued', 'running')",
                (time.time(), gave_up_error(self._attempts(c, job_id)), job_id),
            )
            return bool(cur.rowcount == 1)

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
