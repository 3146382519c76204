"""Webhook deliveries in a SQL database (SQLite or PostgreSQL): one row per job to announce, one
row per attempt. The statements are written once, with a
:class:`~fluxserve.backends.sql_dialect.Dialect` for where the two databases differ."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fluxserve.backends.sql_dialect import Dialect
from fluxserve.records import WebhookAttempt, WebhookDelivery
from fluxserve.stores import SqlDatabase

COLUMNS = "delivery_id, job_id, url, secret, base_url, state, attempts, next_at"
"""A delivery row's columns, as :func:`delivery` reads them."""


def delivery(r: Any) -> WebhookDelivery:
    """A deliveries table row as a :class:`~fluxserve.records.WebhookDelivery`."""
    return WebhookDelivery(
        # SQLite rows made before delivery ids existed get a stable one derived from the job.
        id=r["delivery_id"] or str(uuid.uuid5(uuid.NAMESPACE_URL, "fluxserve-webhook:" + r["job_id"])),
        job_id=r["job_id"],
        url=r["url"],
        secret=r["secret"],
        base_url=r["base_url"],
        state=r["state"],
        attempts=r["attempts"],
        next_at=r["next_at"],
    )


class SqlWebhookStore:
    """:class:`~fluxserve.stores.WebhookStore` over the webhook tables of ``db``.

    With ``lease_s`` (several processes share the database), a claim is a lease: a delivery
    whose sender died mid-attempt is due again once the lease runs out, and a process that
    restarts does not take back the deliveries other processes are sending."""

    def __init__(self, db: SqlDatabase, dialect: Dialect, lease_s: float | None = None) -> None:
        self._db = db
        self._d = dialect
        self._deliveries = dialect.table("webhook_deliveries")
        self._attempts = dialect.table("webhook_attempts")
        self.lease_s = lease_s
        """With several processes: how long a claim holds before another process may retry it."""

    def activate(self, job_id: str) -> bool:
        """Make the job's waiting delivery due now."""
        with self._db.transaction() as c:
            cur = c.execute(
                self._d.sql(
                    f"UPDATE {self._deliveries} SET state = 'pending', next_at = ?"
                    " WHERE job_id = ? AND state = 'waiting'"
                ),
                (time.time(), job_id),
            )
            return bool(cur.rowcount == 1)

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim due deliveries (pending -> sending), in the order they fell due."""
        with self._db.transaction() as c:
            rows = c.execute(
                self._d.sql(
                    f"SELECT {COLUMNS} FROM {self._deliveries} WHERE state = 'pending' AND next_at <= ?"
                    f" ORDER BY next_at LIMIT ?{self._d.skip_locked}"
                ),
                (time.time(), limit),
            ).fetchall()
            for r in rows:
                c.execute(
                    self._d.sql(f"UPDATE {self._deliveries} SET state = 'sending' WHERE job_id = ?"),
                    (r["job_id"],),
                )
        return [delivery(r) for r in rows]

    def recover(self) -> None:
        """In-flight deliveries are due again (with a lease: those whose lease ran out)."""
        with self._db.transaction() as c:
            c.execute(
                self._d.sql(
                    f"UPDATE {self._deliveries} SET state = 'pending'"
                    " WHERE state = 'sending' AND (? OR next_at <= ?)"
                ),
                (self.lease_s is None, time.time()),
            )

    def activate_ended(self, ended_before: float) -> int:
        """Deliveries still waiting for a job that ended before ``ended_before`` are due now."""
        jobs = self._d.table("jobs")
        with self._db.transaction() as c:
            cur = c.execute(
                self._d.sql(
                    f"UPDATE {self._deliveries} SET state = 'pending', next_at = ? WHERE state = 'waiting'"
                    f" AND job_id IN (SELECT id FROM {jobs} WHERE finished_at < ?)"
                ),
                (time.time(), ended_before),
            )
            return int(cur.rowcount)

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
        with self._db.transaction() as c:
            c.execute(
                self._d.sql(
                    f"INSERT INTO {self._attempts} (job_id, attempt, at, status_code, error, duration_s)"
                    " VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (job_id, attempt, time.time(), status_code, error, round(duration_s, 4)),
            )
            c.execute(
                self._d.sql(
                    f"UPDATE {self._deliveries} SET state = ?, attempts = ?, next_at = ? WHERE job_id = ?"
                ),
                (state, attempt, next_at, job_id),
            )

    def attempts(self, job_id: str) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
        """The delivery and its attempts, oldest first."""
        rows = self._db.query(
            self._d.sql(f"SELECT {COLUMNS} FROM {self._deliveries} WHERE job_id = ?"), (job_id,)
        )
        attempts = self._db.query(
            self._d.sql(
                f"SELECT attempt, at, status_code, error, duration_s FROM {self._attempts}"
                " WHERE job_id = ? ORDER BY attempt"
            ),
            (job_id,),
        )
        return (delivery(rows[0]) if rows else None), [WebhookAttempt(**dict(a)) for a in attempts]
