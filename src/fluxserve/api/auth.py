"""Who is calling: the API key a request carries, checked against the current key set.

Decided per request. Before the first key is ever created, requests are accepted only while
the server listens on loopback (anyone who can reach it is on this machine). Once a key has
existed, the server stays closed: every request needs an active key, on any address, also after
the last key is revoked, so revoking a leaked key never opens the server. Only the explicit
setting ``auth = "none"`` (loopback only) turns key checks off.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from fluxserve.accounts import LimitReached
from fluxserve.api.errors import OpenAIError
from fluxserve.api.state import get_state
from fluxserve.api.throttle import client_address

CREATE_HINT = "create one with: fluxserve keys create"


class AuthFailed(Exception):
    """The request may not proceed. ``no_keys``: the server has no active key at all (the
    message says so); ``status`` 403: the key lacks the route's scope; 429: the key's requests
    per minute are used up (``retry_after_s``); otherwise the key is missing or wrong."""

    def __init__(
        self, message: str = "", no_keys: bool = False, status: int = 401, retry_after_s: int = 0
    ) -> None:
        super().__init__(message)
        self.no_keys = no_keys
        self.status = status
        self.retry_after_s = retry_after_s


def required_scope(request: Request) -> str:
    """The scope a route needs: ``admin`` under ``/v1/admin``, ``generate`` to submit or
    cancel (POST, DELETE), ``read`` for everything else."""
    if request.url.path.startswith("/v1/admin"):
        return "admin"
    return "generate" if request.method in ("POST", "PUT", "PATCH", "DELETE") else "read"


def presented_key(request: Request) -> str | None:
    """The API key a request carries: ``x-key`` (BFL) or ``Authorization: Bearer`` (OpenAI)."""
    key = request.headers.get("x-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(request: Request) -> str | None:
    """The caller's key id (None when the server runs open on loopback); raises
    :class:`AuthFailed` otherwise."""
    state = get_state(request)
    if state.settings.auth == "none":  # explicit, loopback only (refused at start otherwise)
        return None
    keys = state.keys
    if not keys.ever_created():
        if state.settings.loopback_only:
            return None
        raise AuthFailed(
            "This server has no API key yet and is reachable beyond this machine, so it "
            f"refuses every request: {CREATE_HINT}.",
            no_keys=True,
        )
    address = client_address(request, state.settings.trusted_proxies)  # guessing slowed down
    if wait := state.throttle.check(address):
        raise AuthFailed(
            f"Too many failed API key checks from this address: retry after {wait} s.",
            status=429,
            retry_after_s=wait,
        )
    key = presented_key(request)
    key_id = keys.verify(key) if key else None
    if key_id is None:
        state.throttle.record_failure(address)
        if key and keys.is_revoked(key):
            raise AuthFailed(
                f"This API key was revoked. Ask the server's operator for a new one ({CREATE_HINT})."
            )
        if not keys.any_active():
            raise AuthFailed(
                "This server has no active API key (the last one was revoked), so it refuses every "
                f"request until a key is created: {CREATE_HINT}.",
                no_keys=True,
            )
        raise AuthFailed()
    accounting = state.accounting
    if accounting is not None:
        grant = accounting.grant(key_id)
        scope = required_scope(request)
        if scope not in grant.scopes:
            raise AuthFailed(
                f"This API key lacks the '{scope}' scope that this route needs "
                f"(it has: {', '.join(grant.scopes)}).",
                status=403,
            )
        try:  # the key's requests per minute: its own limit or its account's, the tighter
            accounting.admit_request(grant)
        except LimitReached as exc:
            raise AuthFailed(f"{exc}.", status=429, retry_after_s=exc.retry_after_s) from exc
    return key_id


def bfl_auth(request: Request) -> str | None:
    """FastAPI dependency for BFL routes: the caller's key id, or 401 ``{"detail": ...}``."""
    try:
        return authenticate(request)
    except AuthFailed as exc:
        if exc.status != 401:
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
            raise HTTPException(exc.status, str(exc), headers=headers) from exc
        message = str(exc) or f"Invalid or missing API key: send it in the 'x-key' header ({CREATE_HINT})."
        raise HTTPException(401, message) from exc


def openai_auth(request: Request) -> str | None:
    """FastAPI dependency for OpenAI routes: the caller's key id, or 401 ``{"error": ...}``."""
    try:
        return authenticate(request)
    except AuthFailed as exc:
        if exc.status == 403:
            raise OpenAIError(403, str(exc), type="invalid_request_error", code="insufficient_scope") from exc
        if exc.status == 429:
            raise OpenAIError(
                429,
                str(exc),
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from exc
        message = (
            str(exc)
            or f"Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>' ({CREATE_HINT})."
        )
        raise OpenAIError(401, message, code="invalid_api_key") from exc
