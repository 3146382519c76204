"""Idempotent submission: the same Idempotency-Key and body within 24 h return the same job."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from fluxserve.db import Database

WINDOW_S = 24 * 3600


class IdempotencyConflict(Exception):
    """The key was used with a different request body."""


def body_hash(route: str, payload: Any) -> str:
    """A stable hash of a request: its route and its parsed content (not its raw bytes, which
    differ between retries of a multipart upload)."""
    text = json.dumps([route, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def reserve(self, key: str, owner: str, digest: str) -> str | None:
        """None when this request owns the key now; otherwise the original job id ("" while the
        original request is still being submitted). Raises IdempotencyConflict."""
        now = time.time()
        with self._db.transaction() as c:
            c.execute("DELETE FROM idempotency WHERE created_at < ?", (now - WINDOW_S,))
            row = c.execute(
                "SELECT body_hash, job_id FROM idempotency WHERE key = ? AND owner = ?", (key, owner)
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO idempotency (key, owner, body_hash, created_at) VALUES (?, ?, ?, ?)",
                    (key, owner, digest, now),
                )
                return None
        if row["body_hash"] != digest:
            raise IdempotencyConflict(key)
        return str(row["job_id"] or "")

    def bind(self, key: str, owner: str, job_id: str) -> None:
        with self._db.transaction() as c:
            c.execute("UPDATE idempotency SET job_id = ? WHERE key = ? AND owner = ?", (job_id, key, owner))

    def release(self, key: str, owner: str) -> None:
        """Forget a reservation whose submission failed (so a retry can succeed)."""
        with self._db.transaction() as c:
            c.execute("DELETE FROM idempotency WHERE key = ? AND owner = ? AND job_id IS NULL", (key, owner))

    async def claim(self, key: str, owner: str, digest: str, timeout_s: float = 30) -> str | None:
        """None when the caller now owns the key (submit, then :meth:`bind` or :meth:`release`);
        otherwise the id of the job the key's first request made, waiting while that request is
        still submitting. Raises IdempotencyConflict for a different body."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job_id = self.reserve(key, owner, digest)
            if job_id:
                return job_id
            if job_id is None:  # the original failed and released the key: this one owns it
                return None
            await asyncio.sleep(0.05)
        raise TimeoutError(key)
