"""HTTP for the SDK: one httpx client with the API key, and retries with backoff.

A 429 and the transient failures (connection errors, timeouts, 502/503/504) are retried with
exponential backoff, honouring ``Retry-After``; every other answer goes back to the caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from fluxserve.client.errors import ServerError

RETRIED_STATUSES = (429, 502, 503, 504)
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0


class Session:
    """The HTTP connection to one server, shared by the protocol, the inputs and the prices."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Send the key both ways the protocols expect it: ``x-key`` (BFL) and a bearer token."""
        self.base_url = base_url
        self.max_retries = max_retries
        headers = {"User-Agent": "fluxserve-client"}
        if api_key:
            headers["x-key"] = api_key
            headers["Authorization"] = f"Bearer {api_key}"
        # Public for the rare request that must not be retried (see pricing).
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport)

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def request(self, method: str, url: str, job_id: str | None = None, **kw: Any) -> httpx.Response:
        """One request, retried while the answer is a 429 or a transient failure.

        Raises :class:`ServerError` (with ``job_id``) once ``max_retries`` retries are spent."""
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            try:
                resp = await self.http.request(method, url, **kw)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt == self.max_retries:
                    raise ServerError(f"cannot reach {url}: {exc.__class__.__name__}", job_id) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if resp.status_code in RETRIED_STATUSES:
                if attempt == self.max_retries:
                    raise ServerError(
                        f"{url} answered {resp.status_code} {self.max_retries + 1} times",
                        job_id,
                        resp.status_code,
                    )
                await asyncio.sleep(min(_retry_after(resp, delay), MAX_RETRY_AFTER_S))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            return resp
        raise AssertionError("unreachable")


def _retry_after(resp: httpx.Response, default: float) -> float:
    """The response's ``Retry-After`` in seconds, else ``default``."""
    value = resp.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return default
