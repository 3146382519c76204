"""``GET /v1/usage``: what the caller's account used, grouped by model, key or day; JSON or CSV."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from fluxserve.accounts.usage import parse_time, to_csv, usage
from fluxserve.api.auth import bfl_auth
from fluxserve.api.state import AppState, get_state

router = APIRouter(tags=["Accounts"])


class UsageItem(BaseModel):
    """One group's usage."""

    group: str = Field(description="The model id, key id or day (YYYY-MM-DD, UTC).")
    jobs: int = Field(description="Charged jobs (ended Ready, Content Moderated, or cancelled mid-run).")
    credits: float = Field(description="Their cost in credits (1 credit = 0.01 USD).")
    usd: float


class UsageReport(BaseModel):
    """``GET /v1/usage``'s answer."""

    account: str
    group_by: str
    items: list[UsageItem]
    total_jobs: int
    total_credits: float


@router.get("/v1/usage", response_model=UsageReport, responses={200: {"content": {"text/csv": {}}}})
async def get_usage(
    from_: str | None = Query(default=None, alias="from", description="Start: unix seconds or ISO 8601."),
    to: str | None = Query(default=None, description="End (exclusive): unix seconds or ISO 8601."),
    group_by: Literal["model", "key", "day", "served_by"] = Query(default="model"),
    format: Literal["json", "csv"] = Query(default="json"),
    account: str | None = Query(default=None, description="Admin keys only: another account's usage."),
    owner: str | None = Depends(bfl_auth),
    state: AppState = Depends(get_state),
) -> Response | UsageReport:
    """The caller's account's usage in ``[from, to)`` (charged jobs and their cost)."""
    accounting = state.accounting
    if accounting is None:
        raise HTTPException(404, "This server keeps no accounts.")
    grant = accounting.grant(owner)
    name = grant.account
    if account is not None and account != name:
        if "admin" not in grant.scopes:
            raise HTTPException(403, "Only admin keys may read another account's usage.")
        if accounting.store.get_account(account) is None:
            raise HTTPException(404, f"No account named {account!r}.")
        name = account
    try:
        since, until = parse_time(from_), parse_time(to)
    except ValueError as exc:
        raise HTTPException(422, f"'from' and 'to' are unix seconds or ISO 8601 dates: {exc}") from exc
    # Keys of the default account are not a team: each sees its own usage (admins: all of it).
    only_key = owner if not grant.shared and name == grant.account and "admin" not in grant.scopes else None
    rows = usage(accounting.store, name, since, until, group_by, key_id=only_key)
    if format == "csv":
        return PlainTextResponse(to_csv(rows, group_by), media_type="text/csv")
    return UsageReport(
        account=name,
        group_by=group_by,
        items=[UsageItem(group=r.group, jobs=r.jobs, credits=r.credits, usd=r.usd) for r in rows],
        total_jobs=sum(r.jobs for r in rows),
        total_credits=round(sum(r.credits for r in rows), 4),
    )
