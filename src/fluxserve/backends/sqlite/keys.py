"""API keys in SQLite (the shared SQL key store, on the ``api_keys`` table)."""

from __future__ import annotations

from fluxserve.backends.sql_keys import SqlKeyStore
from fluxserve.backends.sqlite.db import Database


class SQLiteKeyStore(SqlKeyStore):
    """:class:`~fluxserve.stores.KeyStore` in the jobs database."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, "api_keys", "?")
