"""API keys in PostgreSQL (the shared SQL key store, on ``fluxserve_api_keys``)."""

from __future__ import annotations

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.backends.sql_keys import SqlKeyStore


class PostgresKeyStore(SqlKeyStore):
    """``KeyStore`` over ``fluxserve_api_keys``."""

    def __init__(self, db: PostgresDatabase) -> None:
        super().__init__(db, "fluxserve_api_keys", "%s")
