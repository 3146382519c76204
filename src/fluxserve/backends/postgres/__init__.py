"""The PostgreSQL backend (``database_url = "postgresql://..."``): jobs, queue, webhooks and keys
in one database that any number of API nodes and workers share."""

from fluxserve.backends.postgres.db import SCHEMA_VERSION, PostgresDatabase, SchemaOutdated
from fluxserve.backends.postgres.jobs import PostgresJobStore
from fluxserve.backends.postgres.keys import PostgresKeyStore
from fluxserve.backends.postgres.webhooks import PostgresWebhookStore

__all__ = [
    "SCHEMA_VERSION",
    "PostgresDatabase",
    "PostgresJobStore",
    "PostgresKeyStore",
    "PostgresWebhookStore",
    "SchemaOutdated",
]
