"""The SDK's typed errors, and how an HTTP error response becomes one of them."""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx


class FluxError(Exception):
    """Base class; ``job_id`` is set once the server has accepted the job."""

    def __init__(self, message: str, job_id: str | None = None, status_code: int | None = None) -> None:
        """Keep the message, the job id (if any) and the HTTP status (if any)."""
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.status_code = status_code

    def __str__(self) -> str:
        """The message, with the job id when there is one."""
        return f"{self.message} (job {self.job_id})" if self.job_id else self.message


class ModeratedError(FluxError):
    """The request (``kind="request"``) or the generated image (``kind="content"``) was
    moderated."""

    def __init__(
        self,
        message: str,
        kind: Literal["request", "content"],
        category: str | None = None,
        job_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        """Also keep what was moderated (``kind``) and why (``category``, when the server says)."""
        super().__init__(message, job_id, status_code)
        self.kind = kind
        self.category = category


class ValidationError(FluxError):
    """The server refused the request's values (400/422): fix the request."""


class AuthError(FluxError):
    """Missing or wrong API key (401/403)."""


class GenerationTimeout(FluxError):
    """The job did not finish within ``generation_timeout``; it may still finish: poll later."""


class ServerError(FluxError):
    """The server failed (5xx, or the job ended in ``Error``). Transient ones are retried."""


def raise_for_response(resp: httpx.Response, job_id: str | None = None) -> None:
    """Raise the typed error that an HTTP error response (status 400 or more) stands for."""
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text[:300]}
    message, code = _error_text(body)
    if resp.status_code in (401, 403):
        raise AuthError(message or "authentication failed: check the API key", job_id, resp.status_code)
    if code == "moderation_blocked":
        category = None
        m = re.search(r"category: ([a-z_]+)", message)
        if m:
            category = m.group(1)
        raise ModeratedError(message, "request", category, job_id, resp.status_code)
    if resp.status_code in (400, 404, 409, 413, 422):
        raise ValidationError(message, job_id, resp.status_code)
    raise ServerError(message or f"HTTP {resp.status_code}", job_id, resp.status_code)


def _error_text(body: Any) -> tuple[str, str | None]:
    """(message, code) from an OpenAI ``{"error": ...}`` or a FastAPI ``{"detail": ...}`` body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("message", "")), err.get("code")
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            return "; ".join(parts), None
        return str(detail), None
    return str(body)[:300], None
