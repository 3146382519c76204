"""Accounting: the hold at submit, the settle or release at a job's end, and the limits checked
before any work.

Rules (also in the README):

- A submission holds the request's cost (``ModelEntry.cost(spec)``, in credits) before any
  work; not enough credits: :class:`InsufficientCredits` (402).
- A job that ends Ready or Content Moderated (the image was made, then withheld) is settled:
  the held credits are spent.
- A job that ends as Error is released (credits back), except a job cancelled after at least
  one denoising step, which is settled. A job cancelled while queued is released.
- A Request Moderated job (refused before any work) is released: moderated requests cost
  nothing.
- Accounts with an unlimited balance record holds and settlements of 0 credits with the cost
  beside them, so usage reports work for them too.

Limits: the account's ``max_active`` and ``rpm``, and a key's own (``Grant.max_active``,
``Grant.rpm``) on top of them: the tighter one wins; a key limit never lifts its account's.
Either refusal is :class:`LimitReached` (429 + ``Retry-After``), naming whose limit it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fluxserve.accounts.models import Grant
from fluxserve.accounts.store import AccountStore
from fluxserve.fair import ANONYMOUS, FairShare
from fluxserve.records import Job, JobStatus

if TYPE_CHECKING:
    from fluxserve.catalog import ModelCatalog
    from fluxserve.spec import GenerationSpec

log = logging.getLogger("fluxserve.accounts")

MAX_MODEL_SUFFIX = "-max"
"""Models whose ids end so have their own, lower, active-task limit (as BFL's ``*-max``)."""


class InsufficientCredits(Exception):
    """The account's balance is below the request's cost."""

    def __init__(self, cost: float, balance: float) -> None:
        super().__init__(
            f"not enough credits: this request costs {cost:g} credits and the balance is {balance:g}"
        )
        self.cost = cost
        self.balance = balance


class LimitReached(Exception):
    """Too many active tasks or requests: retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class AccountLimits:
    """Limits of the accounting that come from settings."""

    max_active_max_models: int = 6
    """Active tasks per account for ``*-max`` models (for accounts with an active limit)."""
    retry_after_s: int = 5
    """``Retry-After`` at the active-task limit."""


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`Accounting.reconcile` ended: holds of jobs that had ended, and holds of
    submissions that never stored their job (whose input files may be left behind)."""

    ended: list[str]
    orphans: list[str]


class Accounting:
    """What the job service calls around a job's life; one per server."""

    def __init__(
        self, store: AccountStore, catalog: ModelCatalog, limits: AccountLimits | None = None
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.limits = limits or AccountLimits()
        self.requests = store.request_counter()
        """Requests per minute per key (shared by the API nodes on PostgreSQL)."""
        self.on_end: list[Callable[[Job, bool, float], None]] = []
        """Called once per job whose hold ended: (job, charged, its cost in credits)."""

    def cost(self, spec: GenerationSpec) -> float:
        """A request's cost in credits (0 for a model the catalog does not price)."""
        entry = self.catalog.get(spec.model)
        return float(entry.cost(spec).credits) if entry is not None else 0.0

    def hold(self, owner: str | None, job_id: str, spec: GenerationSpec) -> None:
        """Hold the cost of ``spec`` for ``job_id``; raises :class:`InsufficientCredits` or
        :class:`LimitReached` and holds nothing when the account may not run it now."""
        grant = self.store.grant_of(owner)
        cost = self.cost(spec)
        why = self.store.hold(
            grant, job_id, spec.model, cost, (MAX_MODEL_SUFFIX, self.limits.max_active_max_models)
        )
        if why == "credits":
            account = self.store.get_account(grant.account)
            raise InsufficientCredits(cost, account.balance or 0.0 if account else 0.0)
        if why == "active":
            account = self.store.get_account(grant.account)
            limit = account.max_active if account else 0
            raise LimitReached(
                f"account {grant.account!r} has {limit} active tasks (its limit); "
                "retry when one of them has finished",
                self.limits.retry_after_s,
            )
        if why == "key_active":
            account = self.store.get_account(grant.account)
            allows = (
                f"{account.max_active} for the whole account"
                if account is not None and account.max_active is not None
                else "no limit for the whole account"
            )
            raise LimitReached(
                f"API key {grant.key_id} has {grant.max_active} active tasks (this key's own limit; "
                f"account {grant.account!r} has {allows}); retry when one of them has finished, or "
                f"have an admin raise it: fluxserve keys limits {grant.key_id} --max-active N",
                self.limits.retry_after_s,
            )
        if why == "active_model":
            raise LimitReached(
                f"account {grant.account!r} has {self.limits.max_active_max_models} active tasks "
                f"of *{MAX_MODEL_SUFFIX} models (their limit); retry when one of them has finished",
                self.limits.retry_after_s,
            )

    def admit_request(self, grant: Grant) -> None:
        """Count one request of the grant's key against its requests per minute (the tighter
        of the key's own ``rpm`` and its account's); raises :class:`LimitReached` (and does not
        count it) when the minute's requests are used up."""
        if grant.key_id is None:
            return
        account = self.store.get_account(grant.account)
        limit = grant.effective_rpm(account.rpm if account is not None else None)
        if limit is None:
            return
        per_minute, own = limit
        wait = self.requests.admit(grant.key_id, per_minute)
        if wait is None:
            return
        if own:
            account_rpm = account.rpm if account is not None else None
            allows = f"{account_rpm} per key" if account_rpm is not None else "no limit"
            message = (
                f"Rate limit reached: API key {grant.key_id} may make {per_minute} requests per minute "
                f"(this key's own limit; account {grant.account!r} allows {allows}); retry in {wait} s, "
                f"or have an admin raise it: fluxserve keys limits {grant.key_id} --rpm N"
            )
        else:
            message = (
                f"Rate limit reached: {per_minute} requests per minute per key (account "
                f"{grant.account!r}'s limit); retry in {wait} s"
            )
        raise LimitReached(message, wait)

    def release(self, job_id: str) -> None:
        """Give back a hold for a job that was never made (a failed create, an idempotent
        replay)."""
        self.store.end(job_id, charge=False)

    def job_ended(self, job: Job) -> bool:
        """Settle or release the job's hold by the rules above; True if the ledger changed."""
        charge = charged(job)
        changed = self.store.end(job.id, charge=charge)
        if changed and self.on_end:
            cost = self.cost(job.spec)
            for observer in self.on_end:
                try:
                    observer(job, charge, cost)
                except Exception:
                    log.exception("an observer of job ends failed")
        return changed

    def reconcile(
        self, job_of: Callable[[str], Job | None], held_before: float, orphan_before: float
    ) -> Reconciled:
        """End the holds a crash left open. The hold of a job that has ended (its process died
        between storing the end and settling it) is settled or released by the rules above. The
        hold of a job that was never stored (its process died during the submission) or is gone
        is released, if it was made before ``orphan_before``: a submission still in flight on
        another node is not one. Holds made after ``held_before`` are left to the usual path."""
        ended: list[str] = []
        orphans: list[str] = []
        for job_id, at in self.store.open_holds(held_before):
            job = job_of(job_id)
            if job is None:
                if at < orphan_before and self.store.end(job_id, charge=False):
                    log.warning("released the credits held for job %s, which was never stored", job_id)
                    orphans.append(job_id)
            elif job.terminal and self.job_ended(job):
                log.warning("ended the credit hold of job %s, which a crash left open", job_id)
                ended.append(job_id)
        return Reconciled(ended, orphans)

    def grant(self, owner: str | None) -> Grant:
        """The caller's grant."""
        return self.store.grant_of(owner)

    def overflow_allowed(self, owner: str | None, spec: GenerationSpec) -> str | None:
        """Why ``owner``'s job may not overflow to an upstream (its account's daily cap would
        be passed), or None when it may."""
        grant = self.store.grant_of(owner)
        account = self.store.get_account(grant.account)
        cap = account.overflow_credits_per_day if account else None
        if cap is None:
            return None
        day = time.time() // 86_400 * 86_400
        spent = self.store.overflow_spent(grant.account, day)
        cost = self.cost(spec)
        if spent + cost > cap:
            return f"account {grant.account!r} reached its overflow cap ({spent:g} of {cap:g} credits today)"
        return None

    def fair_share(self, owner: str | None) -> FairShare:
        """Whose share a new job of ``owner`` draws on: its named account (with the account's
        weight), else the key itself (weight 1), else the anonymous share."""
        if owner is None:
            return FairShare(ANONYMOUS)
        grant = self.store.grant_of(owner)
        if not grant.shared:
            return FairShare(f"key:{owner}")
        account = self.store.get_account(grant.account)
        return FairShare(f"account:{grant.account}", account.weight if account else 1.0)

    def same_account(self, job_owner: str | None, caller: str | None) -> bool:
        """Whether ``caller`` may see a job made by ``job_owner``: the same key, or two keys of
        one named account (keys of the default account see only their own jobs)."""
        if job_owner == caller:
            return True
        if job_owner is None or caller is None:
            return False
        mine = self.store.grant_of(caller)
        return mine.shared and self.store.grant_of(job_owner).account == mine.account


def charged(job: Job) -> bool:
    """Whether a job that ended is charged (see the module's rules)."""
    if job.status in (JobStatus.READY, JobStatus.CONTENT_MODERATED):
        return True
    if job.status == JobStatus.ERROR:
        details = job.details or {}
        return details.get("error") == "cancelled" and int(details.get("steps_done") or 0) > 0
    return False
