"""One job's conversation with an upstream: HTTP calls with retries, back-off and ``Retry-After``,
and the result download (see docs/upstreams.md)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from fluxserve.engines import NotAccepted
from fluxserve.netguard import UrlRefused, fetch_url
from fluxserve.settings import UpstreamSettings

log = logging.getLogger("fluxserve.upstreams")


class UpstreamError(Exception):
    """An upstream failed (down, refused, errored, too slow); the message is the job's error."""


class UpstreamNotAccepted(UpstreamError, NotAccepted):
    """An upstream failed before it accepted the job (unreachable, or it refused the
    submission): nothing ran there, so the job may run elsewhere."""


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a response in seconds (delta-seconds or an HTTP date), or None."""
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class UpstreamCall:
    """The HTTP side of one job at one upstream: every request retried on connection errors and
    5xx with back-off, 429 answered by waiting ``Retry-After``, all within ``max_wait_s``."""

    name: str
    settings: UpstreamSettings
    allow_private_urls: bool
    max_download_bytes: int
    started: float = field(default_factory=time.monotonic)
    accepted: bool = False
    """Whether a submission reached the upstream (answered 2xx, or sent and then cut off):
    from then on a failure may have run there, so it is not :class:`UpstreamNotAccepted`."""

    def __post_init__(self) -> None:
        self.host = httpx.URL(self.settings.base_url).host
        self.client = httpx.AsyncClient(
            timeout=self.settings.timeout_s, trust_env=False, follow_redirects=False
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self.client.aclose()

    def remaining(self) -> float:
        """Seconds left of ``max_wait_s``."""
        return self.settings.max_wait_s - (time.monotonic() - self.started)

    def backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1, 2, ...): doubling from ``poll_interval_s``."""
        return min(self.settings.max_poll_interval_s, self.settings.poll_interval_s * 2 ** (attempt - 1))

    async def wait(self, seconds: float, why: str) -> None:
        """Sleep ``seconds``, or fail at once when that would pass the job's deadline."""
        if seconds >= self.remaining():
            raise UpstreamError(
                f"upstream {self.name!r} did not finish within {self.settings.max_wait_s:g} s ({why})"
            )
        await asyncio.sleep(seconds)

    def trusted(self, url: str) -> bool:
        """Whether ``url`` is on the upstream's own site: its (operator-configured) host, or,
        for a domain name of three labels or more, a sibling under the same parent domain
        (``api.bfl.ai`` trusts ``api.us1.bfl.ai`` and ``delivery-eu1.bfl.ai``)."""
        try:
            host = httpx.URL(url).host
        except Exception:
            return False
        if not host or host == self.host:
            return bool(host)
        labels = self.host.split(".")
        if len(labels) < 3 or labels[-1].isdigit():  # an IP address or a bare domain: exact only
            return False
        return host.endswith("." + ".".join(labels[1:]))

    async def request(
        self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call to the upstream, retried as described above (a submission only when it never
        reached the upstream: a failed connect, a 429 or a 5xx). Returns any response below 500
        other than 429 (the caller maps it); raises :class:`UpstreamError` otherwise."""
        if not self.trusted(url):
            raise UpstreamError(f"upstream {self.name!r} pointed us at another host ({httpx.URL(url).host})")
        failures = 0
        limited = 0
        while True:
            budget = max(0.1, self.remaining())
            try:
                response = await self.client.request(
                    method, url, timeout=min(timeout or self.settings.timeout_s, budget), **kwargs
                )
            except httpx.TransportError as exc:
                failures += 1
                reason = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if method != "GET" and sent:  # it may have run there: no second one (no double charge)
                    self.accepted = True
                    raise UpstreamError(
                        f"upstream {self.name!r}: the connection failed during {method} {url} ({reason})"
                    ) from exc
                if failures > self.settings.max_retries:
                    raise UpstreamError(
                        f"upstream {self.name!r} is unreachable at {self.settings.base_url} "
                        f"({reason}; {failures} attempts)"
                    ) from exc
                log.warning("upstream %s: %s %s failed (%s); retrying", self.name, method, url, reason)
                await self.wait(self.backoff(failures), f"unreachable: {reason}")
                continue
            if response.status_code == 429:
                limited += 1
                delay = retry_after_s(response)
                delay = self.backoff(limited) if delay is None else delay
                log.info("upstream %s: 429, waiting %.2f s", self.name, delay)
                await self.wait(delay, f"rate limited (HTTP 429, Retry-After {delay:g} s)")
                continue
            if response.status_code >= 500:
                failures += 1
                if failures > self.settings.max_retries:
                    raise UpstreamError(
                        f"upstream {self.name!r} answered HTTP {response.status_code}: {response.text[:300]}"
                    )
                await self.wait(self.backoff(failures), f"HTTP {response.status_code}")
                continue
            if method != "GET" and response.is_success:
                self.accepted = True
            return response

    async def download(self, url: str) -> bytes:
        """The result file at ``url``, fetched at once (upstream URLs expire). A URL on the
        upstream's own host is fetched directly; any other through the private-address guard
        (unless ``allow_private_urls``): an upstream's answer must not reach our network."""
        try:
            return await fetch_url(
                url,
                max_bytes=self.max_download_bytes,
                timeout_s=max(0.1, min(self.settings.timeout_s, self.remaining())),
                allow_private=self.allow_private_urls or self.trusted(url),
            )
        except UrlRefused as exc:
            raise UpstreamError(f"upstream {self.name!r}: downloading the result failed: {exc}") from exc
