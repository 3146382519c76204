"""Accounts, key grants and the credit ledger in a SQL database (SQLite or PostgreSQL).

The ledger is append-only and every row that changes a balance is written in the same
transaction as the balance itself, so ``SUM(amount)`` over an account's rows always equals its
balance. A job has at most one ``hold`` and one ``settle`` or ``release`` (a unique index), so
an end seen twice changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fluxserve.accounts.limits import RateLimiter, RequestCounter, SharedRateLimiter
from fluxserve.accounts.models import (
    ALL_SCOPES,
    DEFAULT_ACCOUNT,
    MAX_LIMIT,
    MAX_WEIGHT,
    MIN_WEIGHT,
    Account,
    BonusRule,
    Grant,
    LedgerEntry,
)
from fluxserve.stores import SqlDatabase

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name       TEXT PRIMARY KEY,
    balance    REAL,
    max_active INTEGER,
    rpm        INTEGER,
    created_at REAL NOT NULL,
    weight     REAL NOT NULL DEFAULT 1
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
)
"""Columns added after the accounts tables first shipped; an older SQLite file gains them on
open (PostgreSQL: a numbered migration, ``fluxserve db upgrade``)."""


class AccountError(ValueError):
    """A request to the store that cannot be done (unknown account, duplicate name...)."""


class AccountStore:
    """Accounts, grants and the ledger over one SQL database."""

    def __init__(self, db: SqlDatabase, prefix: str, placeholder: str, postgres: bool = False) -> None:
        self._db = db
        self._prefix = prefix
        self._p = placeholder
        self._postgres = postgres
        self._grants: dict[str, tuple[float, Grant]] = {}
        with self._db.transaction() as c:
            c.execute(
                self._sql(
                    "INSERT INTO {accounts} (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
                ),
                (DEFAULT_ACCOUNT, time.time()),
            )

    def _sql(self, text: str) -> str:
        for table in ("accounts", "account_keys", "ledger", "jobs"):
            text = text.replace("{" + table + "}", self._prefix + table)
        return text.replace("?", self._p)

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

    def topup(self, name: str, usd: float, bonus: BonusRule) -> tuple[float, float]:
        """Add ``usd`` (as credits) plus the bonus; returns (credits added, bonus credits).
        An unlimited account becomes a counted one starting from the top-up."""
        if usd <= 0:
            raise AccountError("a top-up is a positive amount of USD")
        credits = round(usd * 100, 4)
        extra = bonus.bonus_credits(usd)
        now = time.time()
        with self._db.transaction() as c:
            row = self._lock_account(c, name)
            if row is None:
                raise AccountError(f"no account named {name!r}")
            if row["balance"] is None:  # accounting starts now: the ledger starts from zero
                c.execute(self._sql("UPDATE {accounts} SET balance = 0 WHERE name = ?"), (name,))
            self._append(c, name, None, None, None, "topup", credits, 0.0, now)
            if extra:
                self._append(c, name, None, None, None, "bonus", extra, 0.0, now)
        return credits, extra

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

    # ledger ---------------------------------------------------------------------------------

    def _lock_account(self, c: Any, name: str) -> Any:
        sql = "SELECT * FROM {accounts} WHERE name = ?" + (" FOR UPDATE" if self._postgres else "")
        return c.execute(self._sql(sql), (name,)).fetchone()

    def _append(
        self,
        c: Any,
        account: str,
        key_id: str | None,
        job_id: str | None,
        model: str | None,
        kind: str,
        amount: float,
        cost: float,
        at: float,
    ) -> None:
        c.execute(
            self._sql(
                "INSERT INTO {ledger} (account, key_id, job_id, model, kind, amount, cost, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (account, key_id, job_id, model, kind, amount, cost, at),
        )
        if amount:
            c.execute(
                self._sql("UPDATE {accounts} SET balance = balance + ? WHERE name = ?"), (amount, account)
            )

    def _open_holds(
        self, c: Any, account: str, model_suffix: str | None = None, key_id: str | None = None
    ) -> int:
        sql = (
            "SELECT COUNT(*) AS n FROM {ledger} h WHERE h.account = ? AND h.kind = 'hold' AND NOT EXISTS "
            "(SELECT 1 FROM {ledger} e WHERE e.job_id = h.job_id AND e.kind IN ('settle', 'release'))"
        )
        params: tuple[Any, ...] = (account,)
        if key_id is not None:
            sql += " AND h.key_id = ?"
            params += (key_id,)
        if model_suffix:
            sql += " AND h.model LIKE ?"
            params += ("%" + model_suffix,)
        row = c.execute(self._sql(sql), params).fetchone()
        return int(row["n"])

    def hold(
        self,
        grant: Grant,
        job_id: str,
        model: str,
        cost: float,
        max_model_active: tuple[str, int] | None = None,
    ) -> str | None:
        """Hold ``cost`` credits for a job about to be made, if the account's and the key's
        limits and the balance allow it. Returns None when held, else why not: ``"active"``,
        ``"active_model"``, ``"key_active"`` (the key's own ``max_active``) or ``"credits"``.
        Unlimited accounts record a hold of 0 (and the cost, for usage). The key's count is
        taken under the account's row lock, like the account's, so concurrent submissions of
        one key on several nodes never pass its limit."""
        now = time.time()
        with self._db.transaction() as c:
            row = self._lock_account(c, grant.account)
            if row is None:
                raise AccountError(f"no account named {grant.account!r}")
            if row["max_active"] is not None:
                if self._open_holds(c, grant.account) >= row["max_active"]:
                    return "active"
                suffix, limit = max_model_active or ("", 0)
                if suffix and model.endswith(suffix) and self._open_holds(c, grant.account, suffix) >= limit:
                    return "active_model"
            key_limit = grant.max_active
            if key_limit is not None and self._open_holds(c, grant.account, key_id=grant.key_id) >= key_limit:
                return "key_active"
            balance = row["balance"]
            if balance is not None and balance < cost - 1e-9:
                return "credits"
            amount = -cost if balance is not None else 0.0
            self._append(c, grant.account, grant.key_id, job_id, model, "hold", amount, cost, now)
        return None

    def end(self, job_id: str, charge: bool) -> bool:
        """Settle (``charge``) or release a job's hold; False if it has none or ended already."""
        now = time.time()
        with self._db.transaction() as c:
            hold = c.execute(
                self._sql("SELECT * FROM {ledger} WHERE job_id = ? AND kind = 'hold'"), (job_id,)
            ).fetchone()
            if hold is None:
                return False
            self._lock_account(c, hold["account"])  # first: concurrent ends of one job queue here
            done = c.execute(
                self._sql("SELECT 1 AS one FROM {ledger} WHERE job_id = ? AND kind IN ('settle', 'release')"),
                (job_id,),
            ).fetchone()
            if done is not None:
                return False
            kind = "settle" if charge else "release"
            amount = 0.0 if charge else -float(hold["amount"])
            self._append(
                c,
                hold["account"],
                hold["key_id"],
                job_id,
                hold["model"],
                kind,
                amount,
                float(hold["cost"]),
                now,
            )
        return True

    def balance_check(self, account: str) -> tuple[float | None, float]:
        """(the account's balance, the sum of its ledger rows): equal for a counted account."""
        acc = self.get_account(account)
        rows = self._db.query(
            self._sql("SELECT COALESCE(SUM(amount), 0) AS s FROM {ledger} WHERE account = ?"), (account,)
        )
        return (acc.balance if acc else None), float(rows[0]["s"])

    def entries(
        self,
        account: str | None,
        since: float | None = None,
        until: float | None = None,
        kinds: Sequence[str] = (),
    ) -> list[LedgerEntry]:
        """Ledger rows, oldest first; of one account (None: all), in ``[since, until)``."""
        sql = "SELECT * FROM {ledger} WHERE 1 = 1"
        params: list[Any] = []
        if account is not None:
            sql += " AND account = ?"
            params.append(account)
        if since is not None:
            sql += " AND at >= ?"
            params.append(since)
        if until is not None:
            sql += " AND at < ?"
            params.append(until)
        if kinds:
            sql += " AND kind IN (" + ", ".join("?" for _ in kinds) + ")"
            params.extend(kinds)
        rows = self._db.query(self._sql(sql + " ORDER BY id"), tuple(params))
        return [
            LedgerEntry(
                int(r["id"]),
                r["account"],
                r["key_id"],
                r["job_id"],
                r["model"],
                r["kind"],
                float(r["amount"]),
                float(r["cost"]),
                float(r["at"]),
            )
            for r in rows
        ]

    def close(self) -> None:
        """Close the database connection(s) this store opened."""
        close = getattr(self._db, "close", None)
        if close is not None:
            close()

    def active(self, account: str, key_id: str | None = None) -> int:
        """Jobs of the account (with ``key_id``: of that key of it) holding credits now
        (queued or running)."""
        with self._db.transaction() as c:
            return self._open_holds(c, account, key_id=key_id)

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
