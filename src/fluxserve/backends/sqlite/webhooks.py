"""Webhook deliveries in SQLite: one row per job to announce, one row per attempt."""

from __future__ import annotations

import sqlite3
import time
import uuid

from fluxserve.backends.sqlite.db import Database
from fluxserve.records import WebhookAttempt, WebhookDelivery


def _delivery(r: sqlite3.Row) -> WebhookDelivery:
    return WebhookDelivery(
        # Rows made before delivery ids existed get a stable one derived from the job.
        id=r["delivery_id"] or str(uuid.uuid5(uuid.NAMESPACE_URL, "fluxserve-webhook:" + r["job_id"])),
        job_id=r["job_id"],
        url=r["url"],
        secret=r["secret"],
        base_url=r["base_url"],
        state=r["state"],
        attempts=r["attempts"],
        next_at=r["next_at"],
    )


class SQLiteWebhookStore:
    """:class:`~fluxserve.stores.WebhookStore` in the jobs database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def activate(self, job_id: str) -> bool:
        """Make the job's waiting delivery due now."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE webhook_deliveries SET state = 'pending', next_at = ?"
                " WHERE job_id = ? AND state = 'waiting'",
                (time.time(), job_id),
            )
        return cur.rowcount == 1

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim due deliveries (pending -> sending)."""
        with self._db.transaction() as c:
            rows = c.execute(
                "SELECT * FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ?"
                " ORDER BY next_at LIMIT ?",
                (time.time(), limit),
            ).fetchall()
            for r in rows:
                c.execute("UPDATE webhook_deliveries SET state = 'sending' WHERE job_id = ?", (r["job_id"],))
        return [_delivery(r) for r in rows]

    def recover(self) -> None:
        """In-flight deliveries of a dead process are due again."""
        with self._db.transaction() as c:
            c.execute("UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'sending'")

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
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, duration_s)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, time.time(), status_code, error, round(duration_s, 4)),
            )
            c.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ? WHERE job_id = ?",
                (state, attempt, next_at, job_id),
            )

    def attempts(self, job_id: str) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
        """The delivery and its attempts, oldest first."""
        rows = self._db.query("SELECT * FROM webhook_deliveries WHERE job_id = ?", (job_id,))
        attempts = self._db.query(
            "SELECT attempt, at, status_code, error, duration_s FROM webhook_attempts"
            " WHERE job_id = ? ORDER BY attempt",
            (job_id,),
        )
        return (_delivery(rows[0]) if rows else None), [WebhookAttempt(**dict(a)) for a in attempts]
