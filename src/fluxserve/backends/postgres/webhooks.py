"""Webhook deliveries in PostgreSQL; claims use ``SKIP LOCKED``, so each delivery attempt is
made by exactly one process however many API nodes share the database."""

from __future__ import annotations

import time
from typing import Any

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.jobs.models import WebhookAttempt, WebhookDelivery

COLUMNS = "delivery_id, job_id, url, secret, base_url, state, attempts, next_at"


def _delivery(r: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        r["delivery_id"],
        r["job_id"],
        r["url"],
        r["secret"],
        r["base_url"],
        r["state"],
        r["attempts"],
        r["next_at"],
    )


class PostgresWebhookStore:
    """``WebhookStore`` over ``fluxserve_webhook_deliveries`` and ``_attempts``."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    def activate(self, job_id: str) -> bool:
        """Make the job's waiting delivery due now."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_webhook_deliveries SET state = 'pending', next_at = %s"
                " WHERE job_id = %s AND state = 'waiting'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim due deliveries (pending -> sending)."""
        with self._db.transaction() as c:
            rows = c.execute(
                f"UPDATE fluxserve_webhook_deliveries SET state = 'sending' WHERE job_id IN ("
                " SELECT job_id FROM fluxserve_webhook_deliveries WHERE state = 'pending' AND next_at <= %s"
                f" ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}",
                (time.time(), limit),
            ).fetchall()
        # RETURNING shows the new state; callers see what they claimed, as the other backends do.
        return sorted((_delivery({**r, "state": "pending"}) for r in rows), key=lambda d: d.next_at)

    def recover(self) -> None:
        """In-flight deliveries are due again."""
        with self._db.transaction() as c:
            c.execute("UPDATE fluxserve_webhook_deliveries SET state = 'pending' WHERE state = 'sending'")

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
                "INSERT INTO fluxserve_webhook_attempts (job_id, attempt, at, status_code, error, duration_s)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (job_id, attempt, time.time(), status_code, error, round(duration_s, 4)),
            )
            c.execute(
                "UPDATE fluxserve_webhook_deliveries SET state = %s, attempts = %s, next_at = %s"
                " WHERE job_id = %s",
                (state, attempt, next_at, job_id),
            )

    def attempts(self, job_id: str) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
        """The delivery and its attempts, oldest first."""
        rows = self._db.query(
            f"SELECT {COLUMNS} FROM fluxserve_webhook_deliveries WHERE job_id = %s", (job_id,)
        )
        attempts = self._db.query(
            "SELECT attempt, at, status_code, error, duration_s FROM fluxserve_webhook_attempts"
            " WHERE job_id = %s ORDER BY attempt",
            (job_id,),
        )
        return (_delivery(rows[0]) if rows else None), [WebhookAttempt(**a) for a in attempts]
