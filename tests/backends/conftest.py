"""Every backend of every seam, as fixtures: each contract test runs once per backend.

The PostgreSQL and S3 backends of the scale-out work join the parameter lists here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxserve.backends.memory import MemoryJobStore, MemoryKeyStore
from fluxserve.backends.sqlite import Database, SQLiteJobStore, SQLiteKeyStore, SQLiteWebhookStore
from fluxserve.storage import LocalStorage, MemoryStorage, SignedUrls


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``{"jobs", "queue", "webhooks", "keys"}`` of one backend, with a 60 s batch delay."""
    if request.param == "memory":
        mem = MemoryJobStore(batch_delay_s=60.0)
        yield {"jobs": mem, "queue": mem, "webhooks": mem.webhooks, "keys": MemoryKeyStore()}
        return
    db = Database(tmp_path / "contract.sqlite3")
    jobs = SQLiteJobStore(db, batch_delay_s=60.0)
    yield {"jobs": jobs, "queue": jobs, "webhooks": SQLiteWebhookStore(db), "keys": SQLiteKeyStore(db)}
    db.close()


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | MemoryStorage:
    """One storage backend, signing with a fixed secret."""
    signer = SignedUrls(b"contract-secret", 600)
    if request.param == "memory":
        return MemoryStorage(signer)
    return LocalStorage(tmp_path / "files", signer)
