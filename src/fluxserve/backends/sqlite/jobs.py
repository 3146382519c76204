"""Jobs in SQLite: the shared SQL job store (:mod:`fluxserve.backends.sql_jobs`) on the ``jobs``
table, the store and the queue of one process."""

from __future__ import annotations

from typing import Any

from fluxserve.backends.sql_jobs import SqlJobStore
from fluxserve.backends.sqlite.db import SQLITE, Database
from fluxserve.stores import REQUEUED_LOCALLY


class SQLiteJobStore(SqlJobStore):
    """:class:`~fluxserve.stores.JobStore` and ``JobQueue`` over one table."""

    def __init__(self, db: Database, batch_delay_s: float = 60.0) -> None:
        super().__init__(db, SQLITE, batch_delay_s)

    def _requeue_left_running(self, c: Any, job_id: str) -> None:
        """Requeue on the local queue: the upstream lane may be gone, and the routing says so
        (SQLite's own JSON function; PostgreSQL's store has its own)."""
        c.execute(
            "UPDATE jobs SET status = 'queued', progress = 0, route = NULL, routing = CASE"
            " WHEN route IS NULL THEN routing ELSE json_set(routing, '$.served_by', 'local',"
            " '$.reason', ?) END WHERE id = ?",
            (REQUEUED_LOCALLY, job_id),
        )
