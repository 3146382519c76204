"""API keys in PostgreSQL, stored as hashes."""

from __future__ import annotations

import hmac
import time

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.keys import ApiKey, hash_key, new_key


class PostgresKeyStore:
    """``KeyStore`` over ``fluxserve_api_keys``."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._cache: tuple[float, bool] | None = None

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Create a key; the secret is returned once and never stored."""
        key_id, secret = new_key()
        now = time.time()
        with self._db.transaction() as c:
            c.execute(
                "INSERT INTO fluxserve_api_keys (id, name, key_hash, created_at) VALUES (%s, %s, %s, %s)",
                (key_id, name, hash_key(secret), now),
            )
        self._cache = None
        return ApiKey(key_id, name, now, None, None), secret

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        rows = self._db.query("SELECT * FROM fluxserve_api_keys ORDER BY created_at")
        return [ApiKey(r["id"], r["name"], r["created_at"], r["revoked_at"], r["last_used_at"]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key."""
        with self._db.transaction() as c:
            cur = c.execute(
                "UPDATE fluxserve_api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            revoked = cur.rowcount == 1
        self._cache = None
        return revoked

    def any_active(self) -> bool:
        """Whether any key is active; cached for a second."""
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > 1.0:
            rows = self._db.query("SELECT 1 FROM fluxserve_api_keys WHERE revoked_at IS NULL LIMIT 1")
            self._cache = (now, bool(rows))
        return self._cache[1]

    def verify(self, secret: str) -> str | None:
        """The id of the active key ``secret`` is, else None."""
        digest = hash_key(secret)
        rows = self._db.query(
            "SELECT id, key_hash FROM fluxserve_api_keys WHERE key_hash = %s AND revoked_at IS NULL",
            (digest,),
        )
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], digest):
            return None
        return str(rows[0]["id"])
