"""``GET /v1/credits``: the caller's credit balance, in the BFL API's shape.

BFL answers ``{"credits": <number>}`` (1 credit = 0.01 USD, the unit of a job's ``cost``).
fluxserve has no credit accounting yet, so every caller's balance is unlimited: the answer is
:data:`UNLIMITED_CREDITS` (a number any balance check passes) with ``"unlimited": true`` for
code that wants to tell. When accounting is configured, this is where a key's balance is read.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from fluxserve.api.auth import bfl_auth

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
async def get_credits(owner: str | None = Depends(bfl_auth)) -> CreditsResponse:
    """The caller's credits (BFL ``get_credits``); unlimited while no accounting is configured."""
    return CreditsResponse(credits=UNLIMITED_CREDITS, unlimited=True)
