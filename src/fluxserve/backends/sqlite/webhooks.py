"""Webhook deliveries in SQLite: the shared SQL webhook store
(:mod:`fluxserve.backends.sql_webhooks`) in the jobs database, for one process."""

from __future__ import annotations

from fluxserve.backends.sql_webhooks import SqlWebhookStore
from fluxserve.backends.sqlite.db import SQLITE, Database


class SQLiteWebhookStore(SqlWebhookStore):
    """:class:`~fluxserve.stores.WebhookStore` in the jobs database."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, SQLITE)
