"""Webhook deliveries in PostgreSQL; claims use ``SKIP LOCKED``, so each delivery attempt is
made by exactly one process however many API nodes share the database.

Shared by several processes (``lease_s`` set), a claim is a lease: a delivery whose sender died
mid-attempt is due again once the lease runs out, and a node that restarts does not take back
the deliveries other nodes are sending."""

from __future__ import annotations

import time
from typing import Any

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.records import WebhookAttempt, WebhookDelivery

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

    def __init__(self, db: PostgresDatabase, lease_s: float | None = None) -> None:
        self._db = db
        self.lease_s = lease_s
        """With several processes: how long a claim holds before another process may retry it."""

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
        """Claim due deliveries (pending -> sending; with a lease, also sending ones whose
        lease ran out)."""
        now = time.time()
        states = ("pending", "sending") if self.lease_s is not None else ("pending",)
        with self._db.transaction() as c:
            rows = c.execute(
                "UPDATE fluxserve_webhook_deliveries SET state = 'sending', next_at = %s WHERE job_id IN ("
                " SELECT job_id FROM fluxserve_webhook_deliveries WHERE state = ANY(%s) AND next_at <= %s"
                f" ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}",
                (now + (self.lease_s or 0.0), list(states), now, limit),
            ).fetchall()
        # RETURNING shows the new state; callers see what they claimed, as the other backends do.
        return sorted((_delivery({**r, "state": "pending"}) for r in rows), key=lambda d: d.next_at)

    def recover(self) -> None:
        """In-flight deliveries are due again (with a lease: those whose lease ran out)."""
        with self._db.transaction() as c:
            c.execute(
                "UPDATE fluxserve_webhook_deliveries SET state = 'pending'"
                " WHERE state = 'sending' AND (%s OR next_at <= %s)",
                (self.lease_s is None, time.time()),
            )

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
