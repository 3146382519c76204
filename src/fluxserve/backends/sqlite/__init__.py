"""The SQLite backend (the default): one database file for jobs, queue, webhooks and keys."""

from fluxserve.backends.sqlite.db import Database
from fluxserve.backends.sqlite.jobs import SQLiteJobStore
from fluxserve.backends.sqlite.keys import SQLiteKeyStore
from fluxserve.backends.sqlite.webhooks import SQLiteWebhookStore

__all__ = ["Database", "SQLiteJobStore", "SQLiteKeyStore", "SQLiteWebhookStore"]
