"""Fetching user-supplied URLs without becoming a proxy into private networks (SSRF guard)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx


class UrlRefused(ValueError):
    """A URL that may not be fetched, or whose fetch failed; the message says why."""


def is_public_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


async def check_url(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and, unless ``allow_private``, any host that resolves to a
    private, loopback, link-local or otherwise non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused(f"only http and https URLs can be fetched, got {url[:100]!r}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except socket.gaierror as exc:
        raise UrlRefused(f"cannot resolve host {parts.hostname!r}: {exc.strerror}") from exc
    for info in infos:
        ip = str(info[4][0])
        if not is_public_address(ip):
            raise UrlRefused(
                f"refusing to fetch {parts.hostname!r}: it resolves to the non-public address "
                f"{ip} (set allow_private_urls / FLUXSERVE_ALLOW_PRIVATE_URLS=1 to allow)"
            )


async def fetch_url(
    url: str, *, max_bytes: int, timeout_s: float, allow_private: bool, max_redirects: int = 3
) -> bytes:
    """GET ``url`` with the SSRF guard applied to it and to every redirect, a timeout and a
    byte limit."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(max_redirects + 1):
            await check_url(url, allow_private)
            try:
                async with client.stream("GET", url) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        url = urljoin(url, resp.headers["location"])
                        continue
                    if resp.status_code != 200:
                        raise UrlRefused(f"fetching {url[:100]} gave HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise UrlRefused(f"{url[:100]} is larger than {max_bytes} bytes")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise UrlRefused(f"{url[:100]} is larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise UrlRefused(f"fetching {url[:100]} failed: {exc.__class__.__name__}") from exc
        raise UrlRefused(f"too many redirects fetching {url[:100]}")
