"""Guessing slowed down: failed key checks counted per client address.

Past ``limit`` failures within ``window_s`` seconds, an address is refused (429 with
``Retry-After``) before its key is even checked, until its oldest failure in the window ages out.
Other addresses, and so valid keys used from elsewhere, are never slowed. Memory stays bounded
whatever the number of addresses: at most ``max_addresses`` are remembered (the least recently
failing are forgotten first), each with at most ``limit`` timestamps.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from functools import lru_cache

from fastapi import Request

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _is_trusted(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_address(request: Request, trusted_proxies: Sequence[str]) -> str:
    """The address a request comes from: the socket peer, unless that peer is one of
    ``trusted_proxies`` (IPs or CIDRs); then the nearest ``X-Forwarded-For`` hop that is not a
    trusted proxy itself. Hops are read from the right (the one the trusted proxy appended),
    so a client cannot pick its address by sending an ``X-Forwarded-For`` of its own."""
    peer = request.client.host if request.client else ""
    if not trusted_proxies:
        return peer
    networks = _networks(tuple(trusted_proxies))
    if not _is_trusted(peer, networks):
        return peer  # the header is ignored unless the peer is a trusted proxy
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    address = peer
    for hop in reversed([hop for hop in hops if hop]):
        address = hop
        if not _is_trusted(hop, networks):
            break
    return address


class FailedAuthThrottle:
    """Counts failed key checks per address; ``check`` says how long a blocked one must wait."""

    def __init__(
        self,
        limit: int = 20,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        min_retry_after_s: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.min_retry_after_s = min_retry_after_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._failures)

    def check(self, address: str) -> int:
        """0 when ``address`` may try a key; otherwise the seconds until it may (Retry-After)."""
        now = self._clock()
        with self._lock:
            stamps = self._failures.get(address)
            if stamps is None:
                return 0
            self._prune(stamps, now)
            if not stamps:
                del self._failures[address]
                return 0
            if len(stamps) < self.limit:
                return 0
            wait = stamps[0] + self.window_s - now
            return max(self.min_retry_after_s, math.ceil(wait))

    def record_failure(self, address: str) -> None:
        """``address`` presented a missing or wrong key."""
        now = self._clock()
        with self._lock:
            stamps = self._failures.get(address)
            if stamps is None:
                stamps = self._failures[address] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(address)
                self._prune(stamps, now)
            stamps.append(now)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)  # the least recently failing address

    def _prune(self, stamps: deque[float], now: float) -> None:
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
