"""``GET /v1/credits``: the caller's credit balance, in the BFL API's shape.

BFL answers ``{"credits": <number>}`` (1 credit = 0.01 USD, the unit of a job's ``cost``).
The balance is the caller's account's (credits still held by running jobs are already taken
off). An account without a finite balance (the default account, or one created without
``--credits``) answers :data:`UNLIMITED_CREDITS` (a number any balance check passes) with
``"unlimited": true`` for code that wants to tell.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from fluxserve.api.auth import bfl_auth
from fluxserve.api.state import AppState, get_state

UNLIMITED_CREDITS = 1_000_000_000.0
"""The balance reported when no accounting is configured: a billion credits (10 million USD)."""

router = APIRouter(tags=["BFL API"])


class CreditsResponse(BaseModel):
    """BFL's ``CreditsResponse``, plus whether the balance is unlimited."""

    credits: float = Field(description="The caller's current credit balance (1 credit = 0.01 USD).")
    unlimited: bool = Field(
        default=False,
        description="True when the server does no credit accounting: the balance never runs out.",
    )


@router.get("/v1/credits", response_model=CreditsResponse)
async def get_credits(
    owner: str | None = Depends(bfl_auth), state: AppState = Depends(get_state)
) -> CreditsResponse:
    """The caller's account's credits (BFL ``get_credits``); unlimited when it has no finite
    balance."""
    if state.accounting is not None:
        account = state.accounting.store.get_account(state.accounting.grant(owner).account)
        if account is not None and account.balance is not None:
            return CreditsResponse(credits=round(account.balance, 4))
    return CreditsResponse(credits=UNLIMITED_CREDITS, unlimited=True)
