"""API keys: created once, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fluxserve.db import Database

KEY_PREFIX = "fsk_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: tuple[float, bool] | None = None

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the secret, which is never stored."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
        now = time.time()
        with self._db.transaction() as c:
            c.execute(
                "INSERT INTO api_keys (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, name, _hash(secret), now),
            )
        self._cache = None
        return ApiKey(key_id, name, now, None, None), secret

    def list(self) -> list[ApiKey]:
        rows = self._db.query("SELECT * FROM api_keys ORDER BY created_at")
        return [ApiKey(r["id"], r["name"], r["created_at"], r["revoked_at"], r["last_used_at"]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        self._cache = None
        return cur.rowcount == 1

    def any_active(self) -> bool:
        # Cached for a second: checked on every request, changed only by the CLI.
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > 1.0:
            rows = self._db.query("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1")
            self._cache = (now, bool(rows))
        return self._cache[1]

    def verify(self, secret: str) -> str | None:
        """The key id when ``secret`` is an active key, else None."""
        digest = _hash(secret)
        rows = self._db.query(
            "SELECT id, key_hash FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,)
        )
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], digest):
            return None
        return str(rows[0]["id"])
