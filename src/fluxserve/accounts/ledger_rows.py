"""The credit ledger's rows in SQL (SQLite or PostgreSQL): holds, settlements, releases and
top-ups, what they add up to, and the reports read from them (usage, overflow spend).

The ledger is append-only and every row that changes a balance is written in the same
transaction as the balance itself, so ``SUM(amount)`` over an account's rows always equals its
balance. A job has at most one ``hold`` and one ``settle`` or ``release`` (a unique index), so
an end seen twice changes nothing. :class:`~fluxserve.accounts.store.AccountStore` builds on
this with the accounts and the keys' grants; :class:`~fluxserve.accounts.ledger.Accounting`
decides what to hold and when to settle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fluxserve.accounts.models import AccountError, BonusRule, Grant, LedgerEntry
from fluxserve.stores import SqlDatabase


class LedgerRows:
    """The ledger over one SQL database: ``prefix`` names its tables (``fluxserve_`` on
    PostgreSQL), ``placeholder`` is the driver's parameter mark."""

    def __init__(self, db: SqlDatabase, prefix: str, placeholder: str, postgres: bool = False) -> None:
        self._db = db
        self._prefix = prefix
        self._p = placeholder
        self._postgres = postgres

    def _sql(self, text: str) -> str:
        for table in ("accounts", "account_keys", "ledger", "jobs"):
            text = text.replace("{" + table + "}", self._prefix + table)
        return text.replace("?", self._p)

    def overflow_spent(self, name: str, since: float) -> float:
        """Credits held since ``since`` by the account's jobs that overflow sent upstream."""
        rows = self._db.query(
            self._sql(
                "SELECT COALESCE(SUM(l.cost), 0) AS spent FROM {ledger} l JOIN {jobs} j ON j.id = l.job_id"
                " WHERE l.account = ? AND l.kind = 'hold' AND l.at >= ? AND j.route = 'upstream'"
            ),
            (name, since),
        )
        return float(rows[0]["spent"]) if rows else 0.0

    def served_by(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Where each of these jobs ran: ``upstream:<name>`` for those overflow sent upstream,
        else ``local`` (jobs already swept are left out)."""
        found: dict[str, str] = {}
        pick = "routing->>'served_by'" if self._postgres else "json_extract(routing, '$.served_by')"
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            marks = ", ".join("?" for _ in chunk)
            rows = self._db.query(
                self._sql(f"SELECT id, {pick} AS served_by FROM {{jobs}} WHERE id IN ({marks})"), tuple(chunk)
            )
            found.update({r["id"]: r["served_by"] or "local" for r in rows})
        return found

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

    def open_holds(self, made_before: float) -> list[tuple[str, float]]:
        """(job id, when held) of every hold made before ``made_before`` that has no settle or
        release yet: jobs queued or running, and any whose end a crash kept from the ledger."""
        rows = self._db.query(
            self._sql(
                "SELECT h.job_id, h.at FROM {ledger} h WHERE h.kind = 'hold' AND h.at < ? AND NOT EXISTS "
                "(SELECT 1 FROM {ledger} e WHERE e.job_id = h.job_id AND e.kind IN ('settle', 'release')) "
                "ORDER BY h.id"
            ),
            (made_before,),
        )
        return [(str(r["job_id"]), float(r["at"])) for r in rows]

    def balance_check(self, account: str) -> tuple[float | None, float]:
        """(the account's balance, the sum of its ledger rows): equal for a counted account."""
        acc = self._db.query(self._sql("SELECT balance FROM {accounts} WHERE name = ?"), (account,))
        rows = self._db.query(
            self._sql("SELECT COALESCE(SUM(amount), 0) AS s FROM {ledger} WHERE account = ?"), (account,)
        )
        balance = acc[0]["balance"] if acc else None
        return (None if balance is None else float(balance)), float(rows[0]["s"])

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

    def active(self, account: str, key_id: str | None = None) -> int:
        """Jobs of the account (with ``key_id``: of that key of it) holding credits now
        (queued or running)."""
        with self._db.transaction() as c:
            return self._open_holds(c, account, key_id=key_id)
