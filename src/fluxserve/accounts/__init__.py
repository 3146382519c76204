"""Accounts: who owns keys, what keys may do (scopes), the credit ledger, limits and usage.

Everything lives in the job store's database (SQLite or PostgreSQL; an in-memory SQLite
database for the memory backend). :class:`~fluxserve.accounts.ledger.Accounting` is what the
job service and the routes call.
"""

from fluxserve.accounts.ledger import Accounting, InsufficientCredits, LimitReached
from fluxserve.accounts.models import (
    ALL_SCOPES,
    DEFAULT_ACCOUNT,
    Account,
    BonusRule,
    Grant,
    LedgerEntry,
    parse_scopes,
)
from fluxserve.accounts.store import AccountStore, account_store

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_ACCOUNT",
    "Account",
    "AccountStore",
    "account_store",
    "Accounting",
    "BonusRule",
    "Grant",
    "InsufficientCredits",
    "LedgerEntry",
    "LimitReached",
    "parse_scopes",
]
