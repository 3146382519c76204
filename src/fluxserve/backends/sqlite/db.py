"""The SQLite database file that holds jobs, webhooks, idempotency keys and API keys."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fluxserve.backends.sql_dialect import Dialect

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    model       TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    progress    REAL NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    result      TEXT,
    details     TEXT,
    moderation  TEXT,
    api_key_id  TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    job_id     TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    secret     TEXT,
    base_url   TEXT NOT NULL,
    state      TEXT NOT NULL,          -- waiting, pending, sending, delivered, failed
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhook_deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_s  REAL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_job ON webhook_attempts (job_id, attempt);
CREATE TABLE IF NOT EXISTS idempotency (
    key        TEXT NOT NULL,
    owner      TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    job_id     TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (key, owner)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    revoked_at   REAL,
    last_used_at REAL
);
"""

# Columns added after the first release; a database made by an older version gains them on open.
MIGRATIONS = (
    ("jobs", "sort_at", "REAL"),
    ("webhook_deliveries", "delivery_id", "TEXT"),
    ("jobs", "fair_flow", "TEXT"),
    ("jobs", "fair_start", "REAL"),
    ("jobs", "fair_end", "REAL"),
    ("jobs", "route", "TEXT"),
    ("jobs", "routing", "TEXT"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, sort_at);
CREATE INDEX IF NOT EXISTS jobs_fair_clock ON jobs (fair_start);
CREATE INDEX IF NOT EXISTS jobs_fair_flow ON jobs (fair_flow, fair_end);
"""


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


SQLITE = Dialect(
    placeholder="?",
    prefix="",
    owner_column="api_key_id",
    row_order="rowid",
    null_safe_eq="IS",
    text_cast="",
    sort_nullable=True,  # rows from before sort_at existed (it was added by a migration)
    encode_json=json.dumps,  # JSON lives in TEXT columns
    decode_json=_loads,
    json_number="json_extract({column}, '$.{key}')",
    lock_rows="",  # BEGIN IMMEDIATE: a write transaction is alone
    skip_locked="",
    returning=False,  # RETURNING needs SQLite 3.35; older ones are still in use
    worker_column=False,  # one process: nothing to name
    flow_lock=None,
)
"""How the stores speak to this database."""


class Database:
    """One connection shared by threads under a lock; WAL so readers never wait on a writer.

    ``synchronous=NORMAL`` in WAL mode survives a killed process (the durability we promise:
    SIGKILL loses nothing committed); only an OS crash may lose the last transactions.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                have = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._conn.executescript(INDEXES)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (a full disk): never leave the shared
                # connection inside a transaction, or every later BEGIN would fail too.
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Run a read query and return every row."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
