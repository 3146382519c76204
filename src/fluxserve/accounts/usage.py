"""Usage reports: the jobs an account was charged for, grouped by model, key, day (UTC) or
where they ran (``served_by``: ``local`` or ``upstream:<name>``, for overflow routing).

Figures come from the ledger's ``settle`` rows (one per charged job): ``jobs`` is how many,
``credits`` what they cost at the catalog's prices (also for unlimited accounts, which are
charged 0), ``charged`` what left the balance.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fluxserve.accounts.store import AccountStore

GroupBy = Literal["model", "key", "day", "served_by"]
GROUPS: tuple[str, ...] = ("model", "key", "day", "served_by")


@dataclass(frozen=True)
class UsageRow:
    """One group's usage."""

    group: str
    jobs: int
    credits: float
    """The jobs' cost in credits (1 credit = 0.01 USD)."""

    @property
    def usd(self) -> float:
        """``credits`` in USD."""
        return round(self.credits / 100, 4)


def parse_time(text: str | None) -> float | None:
    """A bound given as unix seconds or an ISO 8601 date/time (UTC unless it says otherwise);
    raises ValueError for anything else."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def usage(
    store: AccountStore,
    account: str | None,
    since: float | None,
    until: float | None,
    group_by: GroupBy,
    key_id: str | None = None,
) -> list[UsageRow]:
    """The charged jobs of ``account`` (None: every account) settled in ``[since, until)``;
    with ``key_id``, only that key's."""
    groups: dict[str, list[float]] = {}
    entries = [
        e
        for e in store.entries(account, since, until, kinds=("settle",))
        if key_id is None or e.key_id == key_id
    ]
    served = store.served_by([e.job_id for e in entries if e.job_id]) if group_by == "served_by" else {}
    for e in entries:
        if group_by == "model":
            name = e.model or "?"
        elif group_by == "key":
            name = e.key_id or "(no key)"
        elif group_by == "served_by":
            name = served.get(e.job_id or "", "?")
        else:
            name = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d")
        acc = groups.setdefault(name, [0, 0.0])
        acc[0] += 1
        acc[1] += e.cost
    return [UsageRow(g, int(v[0]), round(v[1], 4)) for g, v in sorted(groups.items())]


def to_csv(rows: list[UsageRow], group_by: GroupBy) -> str:
    """The rows as CSV with a header line: ``<group_by>,jobs,credits,usd``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([group_by, "jobs", "credits", "usd"])
    for r in rows:
        writer.writerow([r.group, r.jobs, f"{r.credits:g}", f"{r.usd:g}"])
    return out.getvalue()


def now() -> float:
    """The current unix time (a seam for reports)."""
    return time.time()
