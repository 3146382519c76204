"""Requests per minute per key: a sliding one-minute window, kept in this process
(:class:`RateLimiter`, SQLite and memory) or in the PostgreSQL database that every API node
shares (:class:`SharedRateLimiter`), so N nodes do not give a key N times its limit."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Protocol

from fluxserve.stores import SqlDatabase

WINDOW_S = 60.0
"""The window ``rpm`` limits count over."""


class RequestCounter(Protocol):
    """Counts each key's requests over the last minute."""

    def admit(self, key: str, per_minute: int) -> int | None:
        """Count one request of ``key``; None if within ``per_minute``, else the seconds to
        wait (for ``Retry-After``), and the request is not counted."""
        ...


class RateLimiter:
    """Counts each key's requests over the last 60 seconds (per process: behind a load
    balancer with N API nodes on SQLite, a key gets up to N times its limit)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
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
            if len(seen) >= per_minute:  # (more than the limit when it was just lowered)
                return max(1, math.ceil(seen[len(seen) - per_minute] + self._window - now))
            seen.append(now)
            return None


PRUNE_EVERY = 500
"""Every this many admissions, a node also drops the aged rows of keys no longer calling."""


class SharedRateLimiter:
    """The sliding window in a PostgreSQL table (one row per admitted request, ``key_id`` and
    the database's clock), so every API node counts against one window per key.

    Atomic under concurrency: each admission runs in one transaction under a per-key advisory
    lock (two nodes admitting the same key queue; different keys do not wait on each other).
    The database's clock is used throughout, so nodes with skewed clocks agree."""

    LOCK_CLASS = 742052
    """The first half of the two-part advisory lock key (the second: the key id's hash)."""

    def __init__(self, db: SqlDatabase, table: str, window_s: float = WINDOW_S) -> None:
        self._db = db
        self._table = table
        self._window = window_s
        self._calls = 0

    def admit(self, key: str, per_minute: int) -> int | None:
        """Count one request of ``key``; None if within ``per_minute``, else the seconds to
        wait (for ``Retry-After``), and the request is not counted."""
        t = self._table
        self._calls += 1
        with self._db.transaction() as c:
            c.execute(f"SELECT pg_advisory_xact_lock({self.LOCK_CLASS}, hashtext(%s::text))", (key,))
            clock = c.execute("SELECT extract(epoch FROM clock_timestamp())::float8 AS now").fetchone()
            now = float(clock["now"])
            aged = now - self._window
            if self._calls % PRUNE_EVERY == 0:
                c.execute(f"DELETE FROM {t} WHERE at <= %s", (aged,))
            else:
                c.execute(f"DELETE FROM {t} WHERE key_id = %s AND at <= %s", (key, aged))
            # The request that must age out before this one fits (the oldest, unless the limit
            # was just lowered below the count).
            row = c.execute(
                f"SELECT at FROM {t} WHERE key_id = %s ORDER BY at DESC OFFSET %s LIMIT 1",
                (key, per_minute - 1),
            ).fetchone()
            if row is not None:
                return max(1, math.ceil(float(row["at"]) + self._window - now))
            c.execute(f"INSERT INTO {t} (key_id, at) VALUES (%s, %s)", (key, now))
            return None
