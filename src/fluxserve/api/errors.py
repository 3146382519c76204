"""Errors in each protocol's own shape: OpenAI ``{"error": {...}}``, BFL ``{"detail": ...}``."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI_PREFIXES = ("/v1/images/", "/v1/models", "/v1/prices")
NESTED_TOO_DEEPLY = "is nested too deeply to parse: keep JSON nesting under a few hundred levels"
STORE_ERRORS = (sqlite3.Error, OSError)
"""Failures of the job store or file storage (a full disk, a lost database): 503, not 500."""
log = logging.getLogger("fluxserve.api")


def is_openai_path(path: str) -> bool:
    """Whether errors on ``path`` take OpenAI's shape (else BFL's)."""
    return path.startswith(OPENAI_PREFIXES)


class OpenAIError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers


def bfl_validation_error(loc: list[str | int], msg: str, type_: str = "value_error") -> JSONResponse:
    """A 422 in FastAPI's (and BFL's) ``{"detail": [{"loc", "msg", "type"}]}`` shape."""
    return JSONResponse(status_code=422, content={"detail": [{"loc": loc, "msg": msg, "type": type_}]})


def error_message(err: Any) -> str:
    """The message of one pydantic error, in words a caller can act on."""
    if err.get("type") == "string_unicode":
        return "Input is not valid Unicode text: it contains a lone surrogate (such as \\ud800)"
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


def first_error(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The offending parameter and a message, for OpenAI's one-error answers."""
    if not errors:
        return None, "invalid request"
    err = errors[0]
    loc = [p for p in err.get("loc", ()) if p not in ("body", "query", "form")]
    param = ".".join(str(p) for p in loc) or None
    msg = error_message(err)
    return param, f"Invalid value for '{param}': {msg}" if param else msg


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body (it answers a bare 400 "There was an error
    parsing the body" for anything but a syntax error), or None for other HTTP errors."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None or exc.detail != "There was an error parsing the body":
        return None
    if isinstance(cause, RecursionError):
        return f"The body {NESTED_TOO_DEEPLY}"
    if isinstance(cause, UnicodeDecodeError):
        return "The body is not valid JSON: it is not UTF-8 text"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "The body is not valid JSON here: it has a number with more than 4300 digits"
    if isinstance(cause, ValueError):
        return "The body is not valid JSON"
    return None


def _shaped(request: Request, status: int, message: str, type_: str, code: str | None) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    if is_openai_path(request.url.path):
        content: dict[str, Any] = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    else:
        content = {"detail": message}
    return JSONResponse(status_code=status, content=content, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in the shape of the protocol the request came by."""

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, STORE_ERRORS):
            log.error("storage failed on %s: %s", request.url.path, exc)
            return _shaped(
                request,
                503,
                "The server's storage is failing (for example a full disk); nothing was changed. "
                "Try again shortly.",
                "server_error",
                "storage_unavailable",
            )
        log.exception("unexpected error on %s", request.url.path)
        return _shaped(request, 500, "Internal server error", "server_error", "internal_error")

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.body, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if is_openai_path(request.url.path):
            param, message = first_error(exc.errors())
            return JSONResponse(
                status_code=400,
                content={
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": param,
                        "code": "invalid_value",
                    }
                },
            )
        detail = [
            {
                "loc": list(e.get("loc", ())),
                "msg": error_message(e),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unparsable = _unparsable_body(exc)
        if unparsable is not None and not is_openai_path(request.url.path):
            # As FastAPI answers a JSON syntax error on these routes: 422, type json_invalid.
            return bfl_validation_error(["body"], unparsable, "json_invalid")
        if unparsable is not None:
            body = OpenAIError(400, unparsable, code="invalid_json").body
            return JSONResponse(status_code=400, content=body)
        if is_openai_path(request.url.path):
            code = {
                401: "invalid_api_key",
                404: "not_found",
                413: "request_too_large",
                429: "rate_limit_exceeded",
            }.get(exc.status_code)
            return JSONResponse(
                status_code=exc.status_code,
                content={
                    "error": {
                        "message": str(exc.detail),
                        "type": "invalid_request_error",
                        "param": None,
                        "code": code,
                    }
                },
                headers=getattr(exc, "headers", None),
            )
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": exc.detail},
            headers=getattr(exc, "headers", None),
        )
