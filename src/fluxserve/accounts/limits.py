"""Requests per minute per key: a sliding one-minute window kept in this process."""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class RateLimiter:
    """Counts each key's requests over the last 60 seconds (per process: behind a load
    balancer with N API nodes, a key gets up to N times its limit)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self._window = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, per_minute: int, now: float | None = None) -> int | None:
        """Count one request of ``key``; None if within ``per_minute``, else the seconds to
        wait (for ``Retry-After``), and the request is not counted."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.setdefault(key, deque())
            while seen and seen[0] <= now - self._window:
                seen.popleft()
            if len(seen) >= per_minute:
                return max(1, math.ceil(seen[0] + self._window - now))
            seen.append(now)
            return None
