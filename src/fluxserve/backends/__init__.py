"""Backends: where jobs, the queue, webhooks, keys and files live, chosen from settings.

:func:`open_backends` is the one place that picks them. Each seam is a protocol in
:mod:`fluxserve.stores`; ``sqlite`` (default), ``memory`` and ``postgres`` implement them all,
and files live in ``local`` storage (default), ``memory``, or S3 when ``storage_url`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fluxserve.settings import Settings
from fluxserve.storage import (
    LocalStorage,
    MemoryStorage,
    S3Storage,
    SignedUrls,
    Storage,
    load_or_create_secret,
)
from fluxserve.stores import (
    EventBus,
    JobClaims,
    JobDispatch,
    JobQueue,
    JobStore,
    KeyStore,
    LocalBus,
    SqlDatabase,
    WebhookStore,
)


@dataclass
class Backends:
    """Every seam's backend for one server."""

    jobs: JobStore
    queue: JobQueue
    webhooks: WebhookStore
    keys: KeyStore
    storage: Storage
    signer: SignedUrls
    close: Callable[[], None]
    bus: EventBus = field(default_factory=LocalBus)
    """Live events between processes (in-process for SQLite and memory)."""
    dispatch: JobDispatch | None = None
    """How jobs reach engine workers in other processes (PostgreSQL); None: the in-process
    queue."""


def open_backends(settings: Settings) -> Backends:
    """Open the backends that the settings name: PostgreSQL when ``database_url`` is set
    (its schema must be current), else ``backend``; S3 when ``storage_url`` is set, else
    ``storage``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signer = SignedUrls(load_or_create_secret(settings.data_dir, settings.secret_key), settings.url_ttl_s)
    storage: Storage
    if settings.storage_url:
        storage = S3Storage(settings.storage_url, signer, presign=settings.storage_presign)
    elif settings.storage == "memory":
        storage = MemoryStorage(signer)
    else:
        storage = LocalStorage(settings.data_dir / "files", signer)
    if settings.database_url:
        from fluxserve.backends.postgres import PostgresDatabase, PostgresKeyStore, PostgresWebhookStore
        from fluxserve.backends.postgres.dispatch import DispatchingJobStore, ProcrastinateDispatch
        from fluxserve.backends.postgres.events import PostgresEventBus

        pg = PostgresDatabase(settings.database_url)
        try:
            pg.check()
        except Exception:
            pg.close()
            raise
        jobs_pg = DispatchingJobStore(pg, batch_delay_s=settings.batch_delay_s)
        # A webhook claim holds for one attempt's deadline and a margin, then another may retry.
        hooks = PostgresWebhookStore(pg, lease_s=settings.webhook_timeout_s + 60)
        return Backends(
            jobs_pg,
            jobs_pg,
            hooks,
            PostgresKeyStore(pg),
            storage,
            signer,
            pg.close,
            bus=PostgresEventBus(settings.database_url),
            dispatch=ProcrastinateDispatch(settings.database_url, jobs_pg, settings.stall_timeout_s),
        )
    if settings.backend == "memory":
        from fluxserve.backends.memory import MemoryJobStore, MemoryKeyStore

        mem = MemoryJobStore(batch_delay_s=settings.batch_delay_s)
        return Backends(mem, mem, mem.webhooks, MemoryKeyStore(), storage, signer, lambda: None)
    from fluxserve.backends.sqlite import Database, SQLiteJobStore, SQLiteKeyStore, SQLiteWebhookStore

    db = Database(settings.db_path)
    jobs = SQLiteJobStore(db, batch_delay_s=settings.batch_delay_s)
    return Backends(jobs, jobs, SQLiteWebhookStore(db), SQLiteKeyStore(db), storage, signer, db.close)


def open_database(settings: Settings) -> SqlDatabase:
    """A connection of its own to the settings' SQL database (the account store's):
    PostgreSQL when ``database_url`` is set (its schema must be current), else the SQLite
    file, or an in-memory SQLite database for the memory backend."""
    if settings.database_url:
        from fluxserve.backends.postgres import PostgresDatabase

        pg = PostgresDatabase(settings.database_url)
        pg.check()
        return pg
    from fluxserve.backends.sqlite import Database

    return Database(Path(":memory:") if settings.backend == "memory" else settings.db_path)


def open_key_store(settings: Settings) -> KeyStore:
    """The key store alone (for ``fluxserve keys``), without opening anything else."""
    if settings.database_url:
        from fluxserve.backends.postgres import PostgresDatabase, PostgresKeyStore

        pg = PostgresDatabase(settings.database_url)
        pg.check()
        return PostgresKeyStore(pg)
    if settings.backend == "memory":
        raise ValueError("the memory backend keeps no keys between processes: use backend = 'sqlite'")
    from fluxserve.backends.sqlite import Database, SQLiteKeyStore

    return SQLiteKeyStore(Database(settings.db_path))


__all__ = [
    "Backends",
    "EventBus",
    "JobClaims",
    "JobDispatch",
    "JobQueue",
    "JobStore",
    "KeyStore",
    "WebhookStore",
    "open_backends",
    "open_database",
    "open_key_store",
]
