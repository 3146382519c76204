"""API keys in a SQL database, stored as hashes: the one implementation the SQLite and
PostgreSQL backends share (they differ only in table name and parameter placeholder)."""

from __future__ import annotations

import hmac
import time

from fluxserve.keys import ApiKey, hash_key, new_key
from fluxserve.stores import SqlDatabase


class SqlKeyStore:
    """:class:`~fluxserve.stores.KeyStore` over one table of a SQL database."""

    def __init__(self, db: SqlDatabase, table: str, placeholder: str) -> None:
        self._db = db
        self._table = table
        self._p = placeholder
        self._cache: tuple[float, bool] | None = None
        self._ever = False  # once a key existed, always: only a True answer is kept

    def _sql(self, text: str) -> str:
        return text.replace("{t}", self._table).replace("?", self._p)

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Create a key; the secret is returned once and never stored."""
        key_id, secret = new_key()
        now = time.time()
        with self._db.transaction() as c:
            c.execute(
                self._sql("INSERT INTO {t} (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)"),
                (key_id, name, hash_key(secret), now),
            )
        self._cache = None
        return ApiKey(key_id, name, now, None, None), secret

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        rows = self._db.query(self._sql("SELECT * FROM {t} ORDER BY created_at"))
        return [ApiKey(r["id"], r["name"], r["created_at"], r["revoked_at"], r["last_used_at"]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key."""
        with self._db.transaction() as c:
            cur = c.execute(
                self._sql("UPDATE {t} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"),
                (time.time(), key_id),
            )
            revoked = bool(cur.rowcount == 1)
        self._cache = None
        return revoked

    def any_active(self) -> bool:
        """Whether any key is active; cached for a second (checked on every request, changed
        by the CLI from another process)."""
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > 1.0:
            rows = self._db.query(self._sql("SELECT 1 AS one FROM {t} WHERE revoked_at IS NULL LIMIT 1"))
            self._cache = (now, bool(rows))
        return self._cache[1]

    def ever_created(self) -> bool:
        """Whether any key was ever created here (revoked keys stay as rows): from then on the
        server needs a key on every request. Cached once true, since it stays true."""
        if not self._ever:
            self._ever = bool(self._db.query(self._sql("SELECT 1 AS one FROM {t} LIMIT 1")))
        return self._ever

    def is_revoked(self, secret: str) -> bool:
        """Whether ``secret`` is a key that was revoked (so its caller can be told so)."""
        rows = self._db.query(
            self._sql("SELECT key_hash FROM {t} WHERE key_hash = ? AND revoked_at IS NOT NULL"),
            (hash_key(secret),),
        )
        return bool(rows)

    def verify(self, secret: str) -> str | None:
        """The id of the active key ``secret`` is, else None."""
        digest = hash_key(secret)
        rows = self._db.query(
            self._sql("SELECT id, key_hash FROM {t} WHERE key_hash = ? AND revoked_at IS NULL"), (digest,)
        )
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], digest):
            return None
        return str(rows[0]["id"])
