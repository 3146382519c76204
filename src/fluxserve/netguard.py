"""Fetching user-supplied URLs without becoming a proxy into private networks (SSRF guard).

Policy:

- only ``http`` and ``https`` URLs with a well-formed host; anything malformed raises
  :class:`UrlRefused` with a message that says why;
- unless ``allow_private``, every address a host resolves to must be globally routable unicast
  (:func:`is_public_address`);
- the address that was checked is the address connected to: the HTTP client resolves each host
  once, inside its network backend, checks the answer and connects to exactly those addresses,
  so DNS cannot answer differently between the check and the connection (DNS rebinding). TLS
  still verifies the URL's own hostname (SNI and ``Host`` are unchanged);
- :func:`fetch_url` has one deadline for everything (connect, redirects, headers, body).

Use :func:`guarded_client` (or :class:`GuardedTransport`) for any request to a user-supplied
URL; :func:`check_url` is the early check for a request handler (a clear 4xx before any work).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import httpcore
import httpx

log = logging.getLogger("fluxserve.netguard")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``async (host, port) -> IP address strings``: how a guarded client resolves host names."""

MAX_URL_LENGTH = 8192
RESOLVE_TIMEOUT_S = 10.0
"""How long :func:`check_url` waits for DNS."""

# IANA special-purpose and other non-global blocks, listed explicitly so that the policy does not
# depend on the Python version's idea of ``is_global``.
_NON_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NON_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")  # incl. Teredo 2001::/32
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.IGNORECASE)
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)


class UrlRefused(ValueError):
    """A URL that may not be fetched, or whose fetch failed; the message says why."""


def _public_v4(addr: ipaddress.IPv4Address) -> bool:
    return addr.is_global and not addr.is_multicast and not any(addr in n for n in _NON_GLOBAL_V4)


def is_public_address(ip: str) -> bool:
    """Whether ``ip`` is a globally routable unicast address: never private, loopback,
    link-local, shared (100.64/10), reserved, documentation, benchmarking, multicast or
    unspecified. IPv4 carried in IPv6 (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
    ``2002::/16``) is judged by the IPv4 address; Teredo, IPv4-compatible and unique-local IPv6
    are refused. Anything that is not an IP address gives False."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv4Address):
        return _public_v4(addr)
    if addr.ipv4_mapped is not None:
        return _public_v4(addr.ipv4_mapped)
    if addr in _NAT64:
        return _public_v4(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr in _6TO4 and addr.sixtofour is not None:
        return _public_v4(addr.sixtofour)
    return (
        addr in _GLOBAL_UNICAST_V6
        and addr.is_global
        and not addr.is_multicast
        and not any(addr in n for n in _NON_GLOBAL_V6)
    )


def _show(url: object) -> str:
    """A URL for a message: quoted, escaped and cut short."""
    text = str(url)
    return repr(text[:100] + ("..." if len(text) > 100 else ""))


def _check_host(host: str, url: str) -> None:
    if "%" in host:
        raise UrlRefused(f"the host of {_show(url)} is not a valid host name or IP address")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        raise UrlRefused(f"the host name of {_show(url)} is empty or longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise UrlRefused(
                f"the host name of {_show(url)} has an empty, over-long (> 63 characters) or invalid label"
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise UrlRefused(
            f"the host of {_show(url)} is an ambiguous numeric address: write IPv4 addresses "
            "as four decimal numbers (a.b.c.d)"
        )


def parse_url(url: str) -> httpx.URL:
    """``url`` parsed by the same parser that will fetch it, or :class:`UrlRefused`: only
    http(s), a valid port, a host that is an IP address or a well-formed DNS name (labels of at
    most 63 characters, at most 253 in all, internationalised names that pass IDNA), no
    control characters, at most ``MAX_URL_LENGTH`` characters."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"URLs longer than {MAX_URL_LENGTH} characters are not fetched")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UrlRefused(f"{_show(url)} contains control characters")
    try:
        url.encode("utf-8")
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decodes IDNA, which fails for invalid A-labels ("xn--zz")
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError) as exc:
        raise UrlRefused(f"{_show(url)} is not a valid URL: {str(exc)[:200]}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs can be fetched, got {_show(url)}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UrlRefused(f"the port of {_show(url)} must be between 1 and 65535")
    try:
        host = parsed.raw_host.decode("ascii")
    except UnicodeError as exc:  # pragma: no cover - httpx IDNA-encodes hosts
        raise UrlRefused(f"the host of {_show(url)} is not valid") from exc
    if not host:
        raise UrlRefused(f"{_show(url)} has no host")
    _check_host(host, url)
    return parsed


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _resolve(host: str, port: int, resolver: Resolver | None) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]  # an IP literal: nothing to resolve
    except ValueError:
        pass
    try:
        addresses = await (resolver or _system_resolver)(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise UrlRefused(f"cannot resolve host {host!r}: {reason}") from exc
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        raise UrlRefused(f"cannot resolve host {host!r}: no addresses")
    return addresses


def _refuse_non_public(host: str, addresses: Iterable[str]) -> None:
    for ip in addresses:
        if not is_public_address(ip):
            raise UrlRefused(
                f"refusing to fetch {host!r}: it resolves to the non-public address {ip} "
                "(set allow_private_urls / FLUXSERVE_ALLOW_PRIVATE_URLS=1 to allow)"
            )


async def check_url(url: str, allow_private: bool, *, resolver: Resolver | None = None) -> None:
    """Refuse a malformed or non-http(s) URL (see :func:`parse_url`) and, unless
    ``allow_private``, one whose host resolves to any non-public address.

    This is an early check, for a clear error before work is queued; the connection itself is
    guarded again by :func:`guarded_client`, against the address it actually uses."""
    parsed = parse_url(url)
    if allow_private:
        return
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with anyio.fail_after(RESOLVE_TIMEOUT_S):
            addresses = await _resolve(host, port, resolver)
    except TimeoutError as exc:
        raise UrlRefused(f"resolving host {host!r} took longer than {RESOLVE_TIMEOUT_S:g} s") from exc
    _refuse_non_public(host, addresses)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, checks every address, connects to a checked address."""

    def __init__(
        self, allow_private: bool, resolver: Resolver | None, inner: httpcore.AsyncNetworkBackend
    ) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._inner = inner

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            with anyio.fail_after(timeout):
                addresses = await _resolve(host, port, self._resolver)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took longer than {timeout} s") from exc
        if not self._allow_private:
            _refuse_non_public(host, addresses)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable checked address of ``host``."""
        error: Exception | None = None
        for address in await self._addresses(host, port, timeout):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: user-supplied URLs do not reach local sockets."""
        raise UrlRefused("connections to unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does."""
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every connection goes to an address that was checked: the host
    is resolved once per connection, every address must be public unless ``allow_private``
    (else :class:`UrlRefused` is raised before connecting), and the socket is opened to one of
    exactly those addresses. TLS verifies the URL's hostname. No proxies, no unix sockets.

    ``resolver`` and ``network_backend`` replace DNS and sockets (tests)."""

    def __init__(
        self,
        allow_private: bool,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its connection pool here without a way to pass a network backend: an
        # equivalent pool with the guarded backend takes its place. Checked so that an httpx
        # that works differently fails loudly instead of connecting unguarded.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version is not supported by fluxserve.netguard")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(
                allow_private, resolver, network_backend or httpcore.AnyIOBackend()
            ),
        )


def guarded_client(
    allow_private: bool,
    timeout_s: float,
    *,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for user-supplied URLs, on a :class:`GuardedTransport`.

    ``timeout_s`` bounds each connect, read and write; wrap each request in
    ``asyncio.timeout(...)`` for a total deadline. Redirects are not followed (a redirect
    would be guarded all the same); environment proxies and ``.netrc`` are ignored. A refused
    address raises :class:`UrlRefused` from the request; network failures raise
    ``httpx.HTTPError`` as usual."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private, resolver=resolver, network_backend=network_backend),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        target = str(url.join(location))
    except Exception as exc:  # httpx raises several types for a malformed Location
        raise UrlRefused(f"{_show(url)} redirects to an invalid URL") from exc
    return parse_url(target)


async def _fetch(client: httpx.AsyncClient, url: httpx.URL, max_bytes: int, max_redirects: int) -> bytes:
    for _ in range(max_redirects + 1):
        # identity: a small compressed body must not inflate past max_bytes in memory.
        async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.is_redirect:
                url = _redirect_target(url, resp.headers["location"])
                continue
            if resp.status_code != 200:
                raise UrlRefused(f"fetching {_show(url)} gave HTTP {resp.status_code}")
            if resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                raise UrlRefused(f"{_show(url)} came compressed (Content-Encoding); send it as is")
            declared = resp.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise UrlRefused(f"{_show(url)} is larger than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_raw():
                size += len(chunk)
                if size > max_bytes:
                    raise UrlRefused(f"{_show(url)} is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    raise UrlRefused(f"too many redirects fetching {_show(url)}")


async def fetch_url(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool,
    max_redirects: int = 3,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> bytes:
    """GET ``url`` through a :func:`guarded_client`, following at most ``max_redirects``
    redirects (each guarded like the first URL), within ONE deadline of ``timeout_s`` for
    everything, and at most ``max_bytes`` of body. Raises only :class:`UrlRefused`."""
    parsed = parse_url(url)
    try:
        async with asyncio.timeout(timeout_s):
            async with guarded_client(
                allow_private, timeout_s, resolver=resolver, network_backend=network_backend
            ) as client:
                return await _fetch(client, parsed, max_bytes, max_redirects)
    except UrlRefused:
        raise
    except TimeoutError as exc:
        raise UrlRefused(f"fetching {_show(url)} took longer than {timeout_s:g} s") from exc
    except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
        raise UrlRefused(f"fetching {_show(url)} failed: {exc.__class__.__name__}") from exc
    except Exception as exc:  # the contract is UrlRefused only: never a 500 for a bad URL
        log.warning("unexpected error fetching %s", _show(url), exc_info=True)
        raise UrlRefused(f"fetching {_show(url)} failed: {exc.__class__.__name__}") from exc
