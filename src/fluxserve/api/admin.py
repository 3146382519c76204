"""``/v1/admin/...``: accounts, keys, limits and top-ups over HTTP (keys with the ``admin``
scope; on an open loopback server with no key, anyone on this machine).

Errors are answered in BFL's ``{"detail": ...}`` shape.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from fluxserve.accounts import ALL_SCOPES, DEFAULT_ACCOUNT, Account, BonusRule, parse_scopes
from fluxserve.accounts.ledger import Accounting
from fluxserve.accounts.models import DEFAULT_GRANT_SCOPES, MAX_LIMIT, MAX_WEIGHT, MIN_WEIGHT
from fluxserve.accounts.store import AccountError
from fluxserve.api.auth import bfl_auth
from fluxserve.api.state import AppState, get_state
from fluxserve.keys import ApiKey

router = APIRouter(prefix="/v1/admin", tags=["Admin"], dependencies=[Depends(bfl_auth)])


class KeyInfo(BaseModel):
    """A key as an account lists it, with its own limits (null: only the account's apply)."""

    id: str
    name: str
    account: str
    scopes: list[str]
    revoked: bool
    max_active: int | None = Field(description="This key's own active-task limit; null: none.")
    rpm: int | None = Field(description="This key's own requests per minute; null: none.")
    active: int = Field(description="This key's queued + running jobs now.")


class AccountInfo(BaseModel):
    """An account: balance (credits; None: unlimited), limits, active tasks, keys."""

    name: str
    credits: float | None = Field(description="Balance in credits (1 credit = 0.01 USD); null: unlimited.")
    max_active: int | None
    rpm: int | None
    weight: float = Field(description="Its share of the engines under fair share (default 1).")
    overflow_credits_per_day: float | None = Field(
        default=None, description="The most credits a day overflow may send upstream; null: no cap."
    )
    active: int
    keys: list[KeyInfo]


class AccountCreate(BaseModel):
    """``POST /v1/admin/accounts``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    credits_usd: float | None = Field(
        default=None, ge=0, description="Initial credits in USD; omit: unlimited."
    )
    max_active: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description="Default: the server's account_max_active."
    )
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    weight: float = Field(
        default=1.0, ge=MIN_WEIGHT, le=MAX_WEIGHT, description="Its share of the engines under fair share."
    )


class OverflowCap(BaseModel):
    """``PUT /v1/admin/accounts/{name}/overflow-cap``: the most credits a day the account's
    jobs may send to upstreams by overflow routing; null: no cap."""

    model_config = ConfigDict(extra="forbid")

    credits_per_day: float | None = Field(ge=0, le=MAX_LIMIT)


class Weight(BaseModel):
    """``PUT /v1/admin/accounts/{name}/weight``: the account's fair-share weight; its jobs
    submitted from now on follow it."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT)


class Limits(BaseModel):
    """``PUT /v1/admin/accounts/{name}/limits`` and ``PUT /v1/admin/keys/{key_id}/limits``:
    null (or left out) removes a limit. A key's limits apply on top of its account's."""

    model_config = ConfigDict(extra="forbid")

    max_active: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class Topup(BaseModel):
    """``POST /v1/admin/accounts/{name}/topup``."""

    model_config = ConfigDict(extra="forbid")

    usd: float = Field(gt=0, le=1_000_000)


class TopupResult(BaseModel):
    """Credits added, bonus included, and the balance after."""

    credits: float
    bonus: float
    balance: float | None


class KeyCreate(BaseModel):
    """``POST /v1/admin/keys``."""

    model_config = ConfigDict(extra="forbid")

    account: str
    name: str = Field(default="", max_length=200)
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_GRANT_SCOPES))
    max_active: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description="This key's own active-task limit."
    )
    rpm: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description="This key's own requests per minute."
    )


class KeyCreated(BaseModel):
    """A new key: the secret is shown this once."""

    id: str
    secret: str
    account: str
    scopes: list[str]
    max_active: int | None = None
    rpm: int | None = None


def _accounting(state: AppState) -> Accounting:
    if state.accounting is None:
        raise HTTPException(404, "This server keeps no accounts.")
    return state.accounting


def account_info(state: AppState, account: Account) -> AccountInfo:
    """An account as the admin API and ``fluxserve accounts list`` show it."""
    accounting = _accounting(state)
    granted = set(accounting.store.keys_of(account.name))
    everyone = _all_granted(accounting) if account.name == DEFAULT_ACCOUNT else set()
    keys = [
        key_info(accounting, k)
        for k in state.keys.list()
        if k.id in granted or (account.name == DEFAULT_ACCOUNT and k.id not in everyone)
    ]
    return AccountInfo(
        name=account.name,
        credits=account.balance,
        max_active=account.max_active,
        rpm=account.rpm,
        weight=account.weight,
        overflow_credits_per_day=account.overflow_credits_per_day,
        active=accounting.store.active(account.name),
        keys=keys,
    )


def key_info(accounting: Accounting, key: ApiKey) -> KeyInfo:
    """A key with its account, scopes, own limits and active tasks."""
    grant = accounting.store.grant_of(key.id)
    return KeyInfo(
        id=key.id,
        name=key.name,
        account=grant.account,
        scopes=list(grant.scopes),
        revoked=key.revoked_at is not None,
        max_active=grant.max_active,
        rpm=grant.rpm,
        active=accounting.store.active(grant.account, key.id),
    )


def _all_granted(accounting: Accounting) -> set[str]:
    return {k for a in accounting.store.list_accounts() for k in accounting.store.keys_of(a.name)}


@router.get("/accounts", response_model=list[AccountInfo])
async def list_accounts(state: AppState = Depends(get_state)) -> list[AccountInfo]:
    """Every account with its balance, limits and keys."""
    return [account_info(state, a) for a in _accounting(state).store.list_accounts()]


@router.post("/accounts", response_model=AccountInfo, status_code=201)
async def create_account(body: AccountCreate, state: AppState = Depends(get_state)) -> AccountInfo:
    """Create an account (credits in USD; none: unlimited)."""
    store = _accounting(state).store
    credits = None if body.credits_usd is None else round(body.credits_usd * 100, 4)
    max_active = body.max_active or state.settings.account_max_active
    try:
        account = store.create_account(body.name, credits, max_active, body.rpm, body.weight)
    except AccountError as exc:
        raise HTTPException(409 if "exists" in str(exc) else 422, str(exc)) from exc
    return account_info(state, account)


@router.get("/accounts/{name}", response_model=AccountInfo)
async def get_account(name: str, state: AppState = Depends(get_state)) -> AccountInfo:
    """One account."""
    account = _accounting(state).store.get_account(name)
    if account is None:
        raise HTTPException(404, f"No account named {name!r}.")
    return account_info(state, account)


@router.put("/accounts/{name}/limits", response_model=AccountInfo)
async def set_limits(name: str, body: Limits, state: AppState = Depends(get_state)) -> AccountInfo:
    """Replace an account's limits."""
    store = _accounting(state).store
    if store.get_account(name) is None:
        raise HTTPException(404, f"No account named {name!r}.")
    try:
        account = store.set_limits(name, body.max_active, body.rpm)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from exc
    return account_info(state, account)


@router.put("/accounts/{name}/weight", response_model=AccountInfo)
async def set_weight(name: str, body: Weight, state: AppState = Depends(get_state)) -> AccountInfo:
    """Set an account's fair-share weight."""
    store = _accounting(state).store
    try:
        account = store.set_weight(name, body.weight)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from exc
    return account_info(state, account)


@router.put("/accounts/{name}/overflow-cap", response_model=AccountInfo)
async def set_overflow_cap(name: str, body: OverflowCap, state: AppState = Depends(get_state)) -> AccountInfo:
    """Cap (or uncap, with null) what the account's jobs may send upstream by overflow a day."""
    store = _accounting(state).store
    try:
        account = store.set_overflow_cap(name, body.credits_per_day)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from exc
    return account_info(state, account)


@router.post("/accounts/{name}/topup", response_model=TopupResult)
async def topup(name: str, body: Topup, state: AppState = Depends(get_state)) -> TopupResult:
    """Add credits, with the server's bonus rule."""
    store = _accounting(state).store
    if store.get_account(name) is None:
        raise HTTPException(404, f"No account named {name!r}.")
    rule = BonusRule(state.settings.topup_bonus_min_usd, state.settings.topup_bonus_percent)
    try:
        credits, bonus = store.topup(name, body.usd, rule)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from exc
    account = store.get_account(name)
    return TopupResult(credits=credits, bonus=bonus, balance=account.balance if account else None)


@router.post("/keys", response_model=KeyCreated, status_code=201)
async def create_key(body: KeyCreate, state: AppState = Depends(get_state)) -> KeyCreated:
    """Create a key for an account; the secret is in this answer only."""
    store = _accounting(state).store
    try:
        scopes = parse_scopes(",".join(body.scopes))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    if store.get_account(body.account) is None:
        raise HTTPException(404, f"No account named {body.account!r}.")
    if not body.name.isprintable() or body.name != body.name.encode("utf-8", "replace").decode():
        raise HTTPException(422, "A key's name is printable text.")
    key, secret = state.keys.create(body.name or body.account)
    store.grant(key.id, body.account, scopes, body.max_active, body.rpm)
    return KeyCreated(
        id=key.id,
        secret=secret,
        account=body.account,
        scopes=list(scopes),
        max_active=body.max_active,
        rpm=body.rpm,
    )


@router.get("/keys", response_model=list[KeyInfo])
async def list_keys(state: AppState = Depends(get_state)) -> list[KeyInfo]:
    """Every key (never its secret) with its account, scopes, own limits and active tasks."""
    accounting = _accounting(state)
    return [key_info(accounting, k) for k in state.keys.list()]


@router.put("/keys/{key_id}/limits", response_model=KeyInfo)
async def set_key_limits(key_id: str, body: Limits, state: AppState = Depends(get_state)) -> KeyInfo:
    """Replace a key's own limits; they apply on top of its account's (the tighter wins)."""
    accounting = _accounting(state)
    key = _find_key(state, key_id)
    if key is None:
        raise HTTPException(404, f"No key {key_id!r}.")
    accounting.store.set_key_limits(key.id, body.max_active, body.rpm)
    return key_info(accounting, key)


def _find_key(state: AppState, key_id: str) -> ApiKey | None:
    if not (key_id.isascii() and key_id.isprintable() and len(key_id) <= 64):
        return None
    return next((k for k in state.keys.list() if k.id == key_id), None)


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, state: AppState = Depends(get_state)) -> None:
    """Revoke a key; never the last active admin key (409): over HTTP that would leave nobody
    able to administer the server. The CLI on the server's own database can still do it."""
    key = _find_key(state, key_id)
    if key is None or key.revoked_at is not None:
        raise HTTPException(404, f"No active key {key_id!r}.")
    grant_of = state.accounting.grant if state.accounting is not None else None
    admins = [
        k.id
        for k in state.keys.list()
        if k.revoked_at is None and grant_of and "admin" in grant_of(k.id).scopes
    ]
    if admins == [key_id]:
        raise HTTPException(
            409,
            f"Key {key_id!r} is the last active admin key; revoking it would leave nobody able to "
            "administer this server. Create another admin key first (POST /v1/admin/keys with "
            'scopes ["generate", "read", "admin"]), or revoke it on the server: fluxserve keys revoke ID.',
        )
    if not state.keys.revoke(key_id):
        raise HTTPException(404, f"No active key {key_id!r}.")


__all__ = ["ALL_SCOPES", "router"]
