"""Webhook deliveries in PostgreSQL: the shared SQL webhook store
(:mod:`fluxserve.backends.sql_webhooks`), whose claims use ``SKIP LOCKED``, so each delivery
attempt is made by exactly one process however many API nodes share the database.

Shared by several processes (``lease_s`` set), a claim is a lease: a delivery whose sender died
mid-attempt is due again once the lease runs out, and a node that restarts does not take back
the deliveries other nodes are sending."""

from __future__ import annotations

import time

from fluxserve.backends.postgres.db import POSTGRES, PostgresDatabase
from fluxserve.backends.sql_webhooks import COLUMNS, SqlWebhookStore, delivery
from fluxserve.records import WebhookDelivery


class PostgresWebhookStore(SqlWebhookStore):
    """``WebhookStore`` over ``fluxserve_webhook_deliveries`` and ``_attempts``."""

    def __init__(self, db: PostgresDatabase, lease_s: float | None = None) -> None:
        super().__init__(db, POSTGRES, lease_s)

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim due deliveries (pending -> sending; with a lease, also sending ones whose
        lease ran out). PostgreSQL's own: one UPDATE ... RETURNING that also moves ``next_at``
        to the lease's end, which is what makes a claim a lease."""
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
        return sorted((delivery({**r, "state": "pending"}) for r in rows), key=lambda d: d.next_at)
