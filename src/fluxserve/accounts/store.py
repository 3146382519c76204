"""Accounts and key grants in a SQL database (SQLite or PostgreSQL), beside the credit
ledger's rows (:mod:`fluxserve.accounts.ledger_rows`), and the SQLite schema of all three."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fluxserve.accounts.ledger_rows import LedgerRows
from fluxserve.accounts.limits import RateLimiter, RequestCounter, SharedRateLimiter
from fluxserve.accounts.models import (
    ALL_SCOPES,
    DEFAULT_ACCOUNT,
    MAX_LIMIT,
    MAX_WEIGHT,
    MIN_WEIGHT,
    Account,
    AccountError,
    Grant,
)
from fluxserve.stores import SqlDatabase

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name       TEXT PRIMARY KEY,
    balance    REAL,
    max_active INTEGER,
    rpm        INTEGER,
    created_at REAL NOT NULL,
    weight     REAL NOT NULL DEFAULT 1,
    overflow_credits_per_day REAL
);
CREATE TABLE IF NOT EXISTS account_keys (
    key_id     TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    max_active INTEGER,
    rpm        INTEGER
);
CREATE TABLE IF NOT EXISTS ledger (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    key_id  TEXT,
    job_id  TEXT,
    model   TEXT,
    kind    TEXT NOT NULL,
    amount  REAL NOT NULL,
    cost    REAL NOT NULL DEFAULT 0,
    at      REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_job_kind ON ledger (job_id, kind);
CREATE INDEX IF NOT EXISTS ledger_by_account ON ledger (account, kind, at);
"""

SQLITE_COLUMNS = (
    ("account_keys", "max_active", "INTEGER"),
    ("account_keys", "rpm", "INTEGER"),
    ("accounts", "weight", "REAL NOT NULL DEFAULT 1"),
    ("accounts", "overflow_credits_per_day", "REAL"),
)
"""Columns added after the accounts tables first shipped; an older SQLite file gains them on
open (PostgreSQL: a numbered migration, ``fluxserve db upgrade``)."""


class AccountStore(LedgerRows):
    """Accounts and the keys' grants, over the database of its ledger (:class:`LedgerRows`)."""

    def __init__(self, db: SqlDatabase, prefix: str, placeholder: str, postgres: bool = False) -> None:
        super().__init__(db, prefix, placeholder, postgres)
        self._grants: dict[str, tuple[float, Grant]] = {}
        with self._db.transaction() as c:
            c.execute(
                self._sql(
                    "INSERT INTO {accounts} (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
                ),
                (DEFAULT_ACCOUNT, time.time()),
            )

    # accounts -------------------------------------------------------------------------------

    def create_account(
        self,
        name: str,
        credits: float | None,
        max_active: int | None,
        rpm: int | None = None,
        weight: float = 1.0,
    ) -> Account:
        """A new account; ``credits`` None: unlimited. Initial credits are a ``topup`` row.
        ``weight``: its share of the engines under fair share (see :mod:`fluxserve.fair`)."""
        if not valid_name(name):
            raise AccountError("account names are 1 to 64 letters, digits, '-' or '_'")
        _check_weight(weight)
        now = time.time()
        with self._db.transaction() as c:
            cur = c.execute(
                self._sql(
                    "INSERT INTO {accounts} (name, balance, max_active, rpm, created_at, weight) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING"
                ),
                (name, None if credits is None else 0.0, max_active, rpm, now, weight),  # topup adds
            )
            if cur.rowcount != 1:
                raise AccountError(f"an account named {name!r} exists already")
            if credits is not None:
                self._append(c, name, None, None, None, "topup", credits, 0.0, now)
        return Account(name, credits, max_active, rpm, now, weight)

    def get_account(self, name: str) -> Account | None:
        """The account, or None (also for a name no account could have)."""
        if not valid_name(name):
            return None
        rows = self._db.query(self._sql("SELECT * FROM {accounts} WHERE name = ?"), (name,))
        return _account(rows[0]) if rows else None

    def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""
        return [
            _account(r) for r in self._db.query(self._sql("SELECT * FROM {accounts} ORDER BY created_at"))
        ]

    def set_limits(self, name: str, max_active: int | None, rpm: int | None) -> Account:
        """Replace an account's limits (None: no limit)."""
        with self._db.transaction() as c:
            cur = c.execute(
                self._sql("UPDATE {accounts} SET max_active = ?, rpm = ? WHERE name = ?"),
                (max_active, rpm, name),
            )
            if cur.rowcount != 1:
                raise AccountError(f"no account named {name!r}")
        account = self.get_account(name)
        assert account is not None
        return account

    def set_weight(self, name: str, weight: float) -> Account:
        """Set an account's fair-share weight (its later jobs follow it)."""
        _check_weight(weight)
        with self._db.transaction() as c:
            cur = c.execute(self._sql("UPDATE {accounts} SET weight = ? WHERE name = ?"), (weight, name))
            if cur.rowcount != 1:
                raise AccountError(f"no account named {name!r}")
        account = self.get_account(name)
        assert account is not None
        return account

    def set_overflow_cap(self, name: str, credits_per_day: float | None) -> Account:
        """Cap what an account's jobs may send to upstreams by overflow, in credits a day
        (None: no cap)."""
        if credits_per_day is not None and not 0 <= credits_per_day <= MAX_LIMIT:
            raise AccountError(f"overflow_credits_per_day is a number from 0 to {MAX_LIMIT} (or none)")
        with self._db.transaction() as c:
            cur = c.execute(
                self._sql("UPDATE {accounts} SET overflow_credits_per_day = ? WHERE name = ?"),
                (credits_per_day, name),
            )
            if cur.rowcount != 1:
                raise AccountError(f"no account named {name!r}")
        account = self.get_account(name)
        assert account is not None
        return account

    # grants ---------------------------------------------------------------------------------

    def grant(
        self,
        key_id: str,
        account: str,
        scopes: Sequence[str],
        max_active: int | None = None,
        rpm: int | None = None,
    ) -> Grant:
        """Give a key its account, scopes and limits (None: only the account's applies)."""
        if self.get_account(account) is None:
            raise AccountError(f"no account named {account!r}: create it with fluxserve accounts create")
        _check_limits(max_active, rpm)
        with self._db.transaction() as c:
            c.execute(
                self._sql(
                    "INSERT INTO {account_keys} (key_id, account, scopes, max_active, rpm) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET account = excluded.account, "
                    "scopes = excluded.scopes, max_active = excluded.max_active, rpm = excluded.rpm"
                ),
                (key_id, account, ",".join(scopes), max_active, rpm),
            )
        self._grants.pop(key_id, None)
        return Grant(key_id, account, tuple(scopes), max_active, rpm)

    def set_key_limits(self, key_id: str, max_active: int | None, rpm: int | None) -> Grant:
        """Replace a key's own limits (None: none). A key without a grant row (the default
        account's) gets one with its default grant, so its account and scopes stay the same."""
        _check_limits(max_active, rpm)
        with self._db.transaction() as c:
            c.execute(
                self._sql(
                    "INSERT INTO {account_keys} (key_id, account, scopes, max_active, rpm) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET "
                    "max_active = excluded.max_active, rpm = excluded.rpm"
                ),
                (key_id, DEFAULT_ACCOUNT, ",".join(ALL_SCOPES), max_active, rpm),
            )
        self._grants.pop(key_id, None)
        return self.grant_of(key_id)

    def grant_of(self, key_id: str | None) -> Grant:
        """The key's grant (cached for two seconds); the default grant for None or a key
        without one."""
        if key_id is None:
            return Grant(None, DEFAULT_ACCOUNT, ALL_SCOPES)
        now = time.monotonic()
        cached = self._grants.get(key_id)
        if cached is not None and now - cached[0] < 2.0:
            return cached[1]
        rows = self._db.query(
            self._sql("SELECT account, scopes, max_active, rpm FROM {account_keys} WHERE key_id = ?"),
            (key_id,),
        )
        grant = (
            Grant(
                key_id,
                rows[0]["account"],
                tuple(rows[0]["scopes"].split(",")),
                rows[0]["max_active"],
                rows[0]["rpm"],
            )
            if rows
            else Grant(key_id, DEFAULT_ACCOUNT, ALL_SCOPES)
        )
        self._grants[key_id] = (now, grant)
        return grant

    def keys_of(self, account: str) -> list[str]:
        """Ids of the keys granted to ``account`` (keys without a grant are the default's)."""
        rows = self._db.query(self._sql("SELECT key_id FROM {account_keys} WHERE account = ?"), (account,))
        return [r["key_id"] for r in rows]

    def close(self) -> None:
        """Close the database connection(s) this store opened."""
        close = getattr(self._db, "close", None)
        if close is not None:
            close()

    def request_counter(self) -> RequestCounter:
        """The requests-per-minute counter for this database: shared by every API node on
        PostgreSQL (one count per key in the database), per process on SQLite."""
        if self._postgres:
            return SharedRateLimiter(self._db, self._prefix + "key_requests")
        return RateLimiter()


def valid_name(name: str) -> bool:
    """Whether ``name`` can name an account: 1 to 64 ASCII letters, digits, '-' or '_'."""
    return 0 < len(name) <= 64 and name.isascii() and name.replace("-", "").replace("_", "").isalnum()


def _check_limits(max_active: int | None, rpm: int | None) -> None:
    for name, value in (("max_active", max_active), ("rpm", rpm)):
        if value is not None and not 1 <= value <= MAX_LIMIT:
            raise AccountError(f"{name} is a whole number from 1 to {MAX_LIMIT} (or none)")


def _check_weight(weight: float) -> None:
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise AccountError(f"weight is a number from {MIN_WEIGHT} to {MAX_WEIGHT:g}")


def _account(r: Any) -> Account:
    return Account(
        r["name"],
        None if r["balance"] is None else float(r["balance"]),
        r["max_active"],
        r["rpm"],
        float(r["created_at"]),
        float(r["weight"]),
        None if r["overflow_credits_per_day"] is None else float(r["overflow_credits_per_day"]),
    )


def account_store(db: SqlDatabase, postgres: bool) -> AccountStore:
    """The account store over an open database: PostgreSQL (its schema comes from the numbered
    migrations, ``fluxserve db upgrade``) or SQLite, whose tables are made or brought up to
    date here."""
    if postgres:
        return AccountStore(db, "fluxserve_", "%s", postgres=True)
    with db.transaction() as c:
        for statement in SQLITE_SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
        for table, column, kind in SQLITE_COLUMNS:
            have = {r["name"] for r in c.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return AccountStore(db, "", "?")
