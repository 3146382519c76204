"""The records of the accounts package: accounts, key grants, ledger entries, the bonus rule."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ACCOUNT = "default"
"""The account of keys made without ``--account`` (and of requests on an open loopback
server): unlimited credits, no active-task limit, each key sees only its own jobs."""

ALL_SCOPES = ("generate", "read", "admin")
"""``generate``: submit and cancel jobs; ``read``: results, events, jobs, models, prices,
credits, usage; ``admin``: the ``/v1/admin/...`` routes."""

MAX_LIMIT = 1_000_000_000
"""The highest ``max_active`` or ``rpm`` an account or key may be given (a database INTEGER)."""
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0
"""The range of an account's fair-share weight."""

DEFAULT_GRANT_SCOPES = ("generate", "read")
"""Scopes of a key created with ``--account`` and no ``--scope``."""


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"generate,read"`` as a tuple of scopes; raises ValueError for an unknown one."""
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes are a comma-separated subset of {', '.join(ALL_SCOPES)}; got {text!r}")
    return scopes


class AccountError(ValueError):
    """A request to the account store that cannot be done (unknown account, duplicate name...)."""


@dataclass(frozen=True)
class Account:
    """One account. ``balance`` is in credits (1 credit = 0.01 USD); None: unlimited (no
    accounting). ``max_active``: queued + running jobs at once (None: no limit).
    ``rpm``: requests per minute per key (None: no limit)."""

    name: str
    balance: float | None
    max_active: int | None
    rpm: int | None
    created_at: float
    weight: float = 1.0
    """Its share of the engines under fair share: weight 2 gets two images for every one of
    an account of weight 1 while both have jobs queued (see :mod:`fluxserve.fair`)."""
    overflow_credits_per_day: float | None = None
    """The most credits a day its jobs may send to upstreams by overflow (None: no cap)."""

    @property
    def unlimited(self) -> bool:
        """True when the account's credits are not counted."""
        return self.balance is None


@dataclass(frozen=True)
class Grant:
    """What a key may do: its account, scopes and optional per-key limits. Keys without a
    grant row belong to :data:`DEFAULT_ACCOUNT` with every scope (as every key had before
    accounts existed) and no limits of their own.

    A key's limits apply on top of its account's: ``max_active`` caps the key's own queued +
    running jobs, ``rpm`` its requests per minute; None: only the account's limit applies."""

    key_id: str | None
    account: str
    scopes: tuple[str, ...]
    max_active: int | None = None
    rpm: int | None = None

    def effective_rpm(self, account_rpm: int | None) -> tuple[int, bool] | None:
        """The requests per minute this key may make given its account's ``rpm``: (the limit,
        whether it is the key's own), the tighter of the two; None: no limit."""
        if self.rpm is not None and (account_rpm is None or self.rpm <= account_rpm):
            return self.rpm, True
        return (account_rpm, False) if account_rpm is not None else None

    @property
    def shared(self) -> bool:
        """Whether the key sees its account's other keys' jobs (named accounts only)."""
        return self.account != DEFAULT_ACCOUNT


@dataclass(frozen=True)
class LedgerEntry:
    """One append-only ledger row. ``amount``: the change to the balance in credits (negative
    for holds); ``cost``: the job's price in credits (also for unlimited accounts, where
    ``amount`` is 0). Kinds: ``topup``, ``bonus``, ``hold``, ``settle``, ``release``."""

    id: int
    account: str
    key_id: str | None
    job_id: str | None
    model: str | None
    kind: str
    amount: float
    cost: float
    at: float


@dataclass(frozen=True)
class BonusRule:
    """Top-up bonus: ``percent`` extra credits on a top-up of at least ``min_usd`` (0: none)."""

    min_usd: float = 100.0
    percent: float = 10.0

    def bonus_credits(self, usd: float) -> float:
        """The bonus in credits for a top-up of ``usd``."""
        if self.percent <= 0 or usd < self.min_usd:
            return 0.0
        return round(usd * 100 * self.percent / 100, 4)
