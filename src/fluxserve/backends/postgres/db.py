"""The PostgreSQL database: a connection pool and versioned schema migrations.

``fluxserve db upgrade`` applies the migrations; the server checks at start that the schema is
current and refuses to run against an older one (it never migrates on its own: several API
nodes and workers share one database, and one command should decide when it changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from procrastinate.schema import SchemaManager
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from fluxserve.backends.sql_dialect import Dialect

POSTGRES = Dialect(
    placeholder="%s",
    prefix="fluxserve_",  # the database may be shared with other applications (and procrastinate)
    owner_column="owner",
    row_order="seq",
    null_safe_eq="IS NOT DISTINCT FROM",
    text_cast="::text",
    sort_nullable=False,
    encode_json=Jsonb,  # JSONB columns; psycopg decodes them on reading
    decode_json=lambda value: value,
    json_number="({column}->>'{key}')::float",
    lock_rows=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",  # workers on many machines claim from one table
    returning=True,
    worker_column=True,
    flow_lock="SELECT pg_advisory_xact_lock(hashtext(?))",
)
"""How the stores speak to this database."""

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs (store and queue), webhooks, idempotency keys, API keys
    """
    CREATE TABLE fluxserve_jobs (
        id          TEXT PRIMARY KEY,
        status      TEXT NOT NULL,
        model       TEXT NOT NULL,
        protocol    TEXT NOT NULL,
        spec        JSONB NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        sort_at     DOUBLE PRECISION NOT NULL,
        seq         BIGSERIAL,
        started_at  DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        progress    DOUBLE PRECISION NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,
        completions INTEGER NOT NULL DEFAULT 0,
        result      JSONB,
        details     JSONB,
        moderation  JSONB,
        owner       TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX fluxserve_jobs_queue ON fluxserve_jobs (sort_at, seq) WHERE status = 'queued';
    CREATE INDEX fluxserve_jobs_finished ON fluxserve_jobs (finished_at);
    CREATE TABLE fluxserve_webhook_deliveries (
        job_id      TEXT PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        url         TEXT NOT NULL,
        secret      TEXT,
        base_url    TEXT NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     DOUBLE PRECISION NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX fluxserve_webhooks_due ON fluxserve_webhook_deliveries (state, next_at);
    CREATE TABLE fluxserve_webhook_attempts (
        id          BIGSERIAL PRIMARY KEY,
        job_id      TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        at          DOUBLE PRECISION NOT NULL,
        status_code INTEGER,
        error       TEXT,
        duration_s  DOUBLE PRECISION
    );
    CREATE INDEX fluxserve_webhook_attempts_by_job ON fluxserve_webhook_attempts (job_id, attempt);
    CREATE TABLE fluxserve_idempotency (
        key        TEXT NOT NULL,
        owner      TEXT NOT NULL,
        body_hash  TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key, owner)
    );
    CREATE TABLE fluxserve_api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        key_hash     TEXT NOT NULL UNIQUE,
        created_at   DOUBLE PRECISION NOT NULL,
        revoked_at   DOUBLE PRECISION,
        last_used_at DOUBLE PRECISION
    );
    """,
    # 2: scale-out: procrastinate's schema (dispatch to engine workers, heartbeats, stalled-job
    # detection), as the installed procrastinate ships it; and the store for live events too
    # big for a NOTIFY payload (previews, partial images)
    SchemaManager.get_schema()
    + """
    CREATE TABLE fluxserve_job_events (
        id     BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL,
        data   JSONB NOT NULL,
        at     TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX fluxserve_job_events_at ON fluxserve_job_events (at);
    ALTER TABLE fluxserve_jobs ADD COLUMN worker TEXT;
    -- jobs waiting from before the upgrade get their dispatch (as DispatchingJobStore defers it)
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)
        SELECT 'fluxserve.' || model, 'fluxserve.run_job', -round(sort_at - 1735689600)::integer,
               jsonb_build_object('job_id', id)
        FROM fluxserve_jobs WHERE status IN ('queued', 'running') ORDER BY sort_at, seq;
    """,
    # 3: accounts, key grants (account, scopes) and the credit ledger (fluxserve.accounts)
    """
    CREATE TABLE fluxserve_accounts (
        name       TEXT PRIMARY KEY,
        balance    DOUBLE PRECISION,
        max_active INTEGER,
        rpm        INTEGER,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE fluxserve_account_keys (
        key_id  TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        scopes  TEXT NOT NULL
    );
    CREATE TABLE fluxserve_ledger (
        id      BIGSERIAL PRIMARY KEY,
        account TEXT NOT NULL,
        key_id  TEXT,
        job_id  TEXT,
        model   TEXT,
        kind    TEXT NOT NULL,
        amount  DOUBLE PRECISION NOT NULL,
        cost    DOUBLE PRECISION NOT NULL DEFAULT 0,
        at      DOUBLE PRECISION NOT NULL
    );
    CREATE UNIQUE INDEX fluxserve_ledger_job_kind ON fluxserve_ledger (job_id, kind);
    CREATE INDEX fluxserve_ledger_by_account ON fluxserve_ledger (account, kind, at);
    """,
    # 4: per-key limits (fluxserve keys limits), and the requests-per-minute window every API
    # node shares (fluxserve.accounts.limits.SharedRateLimiter: one row per admitted request)
    """
    ALTER TABLE fluxserve_account_keys ADD COLUMN max_active INTEGER, ADD COLUMN rpm INTEGER;
    CREATE TABLE fluxserve_key_requests (
        key_id TEXT NOT NULL,
        at     DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX fluxserve_key_requests_by_key ON fluxserve_key_requests (key_id, at);
    CREATE INDEX fluxserve_key_requests_at ON fluxserve_key_requests (at);
    """,
    # 5: fair share (fluxserve.fair: each job's flow and start/end tags; each account's weight)
    # and overflow routing (each job's lane and routing decision; each account's daily cap)
    """
    ALTER TABLE fluxserve_jobs ADD COLUMN fair_flow TEXT, ADD COLUMN fair_start DOUBLE PRECISION,
        ADD COLUMN fair_end DOUBLE PRECISION, ADD COLUMN route TEXT, ADD COLUMN routing JSONB;
    CREATE INDEX fluxserve_jobs_fair_clock ON fluxserve_jobs (fair_start);
    CREATE INDEX fluxserve_jobs_fair_flow ON fluxserve_jobs (fair_flow, fair_end);
    ALTER TABLE fluxserve_accounts ADD COLUMN weight DOUBLE PRECISION NOT NULL DEFAULT 1,
        ADD COLUMN overflow_credits_per_day DOUBLE PRECISION;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaOutdated(RuntimeError):
    """The database's schema is older (or newer) than this version of fluxserve expects."""


class PostgresDatabase:
    """A psycopg 3 connection pool for one database URL."""

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
        self.url = url
        self._pool: ConnectionPool[Connection[dict[str, Any]]] = ConnectionPool(
            url, min_size=min_size, max_size=max_size, kwargs={"row_factory": dict_row}, open=True
        )

    @property
    def pool(self) -> ConnectionPool[Connection[dict[str, Any]]]:
        """The pool itself (procrastinate defers jobs on its connections)."""
        return self._pool

    @contextmanager
    def transaction(self) -> Iterator[Connection[dict[str, Any]]]:
        """A connection inside one transaction (committed on success, rolled back on error)."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Run a read query and return every row as a dict."""
        with self._pool.connection() as conn:
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def version(self) -> int:
        """The schema version the database is at (0 for an empty database)."""
        with self._pool.connection() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS fluxserve_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM fluxserve_schema").fetchone()
            return int(row["v"] or 0) if row else 0

    def upgrade(self) -> list[int]:
        """Apply every migration the database lacks, each in its own transaction, under an
        advisory lock (two upgrades at once wait for each other). Returns the versions applied."""
        applied = []
        with self._pool.connection() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS fluxserve_schema (version INTEGER NOT NULL)")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(742051)")
                row = conn.execute("SELECT max(version) AS v FROM fluxserve_schema").fetchone()
                current = int(row["v"] or 0) if row else 0
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[version - 1])  # type: ignore[arg-type]
                    conn.execute("INSERT INTO fluxserve_schema (version) VALUES (%s)", (version,))
                    applied.append(version)
        return applied

    def check(self) -> None:
        """Raise :class:`SchemaOutdated` unless the schema is exactly this version's."""
        found = self.version()
        if found != SCHEMA_VERSION:
            raise SchemaOutdated(
                f"the database at {self.url.split('@')[-1]} has schema version {found}, this "
                f"fluxserve needs {SCHEMA_VERSION}: run `fluxserve db upgrade` first"
            )

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()
