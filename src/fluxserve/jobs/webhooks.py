"""Durable webhook delivery: one row per job to deliver, one row per attempt, retries with
exponential backoff, and a dispatcher task that never blocks the generation worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from fluxserve.db import Database
from fluxserve.netguard import UrlRefused, check_url

log = logging.getLogger("fluxserve.webhooks")
SIGNATURE_HEADER = "X-Fluxserve-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body under the secret>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """Check a signature header as a receiver should: right MAC, recent timestamp."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = sign(secret, ts, body).split("v1=")[1]
    fresh = abs((now if now is not None else time.time()) - ts) <= tolerance_s
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue(self, job_id: str, url: str, secret: str | None, base_url: str) -> None:
        now = time.time()
        with self._db.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (job_id, url, secret, base_url, state,"
                " attempts, next_at, created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
                (job_id, url, secret, base_url, now, now),
            )

    def due(self, limit: int = 16) -> list[dict[str, Any]]:
        """Claim deliveries that are due (pending -> sending)."""
        now = time.time()
        with self._db.transaction() as c:
            rows = c.execute(
                "SELECT * FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ?"
                " ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            for r in rows:
                c.execute("UPDATE webhook_deliveries SET state = 'sending' WHERE job_id = ?", (r["job_id"],))
        return [dict(r) for r in rows]

    def recover(self) -> None:
        """After a restart: deliveries that were in flight are due again."""
        with self._db.transaction() as c:
            c.execute("UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'sending'")

    def record(
        self,
        job_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_s: float,
        state: str,
        next_at: float,
    ) -> None:
        with self._db.transaction() as c:
            c.execute(
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, duration_s)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, time.time(), status_code, error, round(duration_s, 4)),
            )
            c.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ? WHERE job_id = ?",
                (state, attempt, next_at, job_id),
            )

    def attempts(self, job_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        rows = self._db.query("SELECT * FROM webhook_deliveries WHERE job_id = ?", (job_id,))
        attempts = self._db.query(
            "SELECT attempt, at, status_code, error, duration_s FROM webhook_attempts"
            " WHERE job_id = ? ORDER BY attempt",
            (job_id,),
        )
        return (dict(rows[0]) if rows else None), [dict(a) for a in attempts]


class WebhookDispatcher:
    """Delivers due webhooks. ``render(job_id, base_url)`` gives the body (get_result's)."""

    def __init__(
        self,
        store: WebhookStore,
        render: Callable[[str, str], dict[str, Any] | None],
        allow_private: bool,
        base_delay_s: float = 5.0,
        max_delay_s: float = 300.0,
        max_attempts: int = 10,
        timeout_s: float = 10.0,
    ) -> None:
        self.store = store
        self.render = render
        self.allow_private = allow_private
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.wakeup = asyncio.Event()
        self._sem = asyncio.Semaphore(8)
        self._tasks: set[asyncio.Task[None]] = set()

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))

    async def run(self) -> None:
        self.store.recover()
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            while True:
                for row in self.store.due():
                    task = asyncio.create_task(self._deliver(client, row))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=0.25)

    async def _deliver(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        async with self._sem:
            attempt = int(row["attempts"]) + 1
            t0 = time.monotonic()
            status: int | None = None
            error: str | None = None
            permanent = False
            try:
                await check_url(row["url"], self.allow_private)
                body_obj = self.render(row["job_id"], row["base_url"])
                if body_obj is None:
                    raise LookupError("the job no longer exists")
                body = json.dumps(body_obj, separators=(",", ":")).encode()
                headers = {"Content-Type": "application/json", "User-Agent": "fluxserve-webhooks"}
                if row["secret"]:
                    headers[SIGNATURE_HEADER] = sign(row["secret"], int(time.time()), body)
                resp = await client.post(row["url"], content=body, headers=headers)
                status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except UrlRefused as exc:
                error, permanent = str(exc), True
            except LookupError as exc:
                error, permanent = str(exc), True
            except httpx.HTTPError as exc:
                error = f"{exc.__class__.__name__}: {exc}"[:300]
            duration = time.monotonic() - t0
            if error is None:
                self.store.record(row["job_id"], attempt, status, None, duration, "delivered", 0)
            elif permanent or attempt >= self.max_attempts:
                self.store.record(row["job_id"], attempt, status, error, duration, "failed", 0)
                log.warning("webhook for job %s failed for good: %s", row["job_id"], error)
            else:
                next_at = time.time() + self.delay(attempt)
                self.store.record(row["job_id"], attempt, status, error, duration, "pending", next_at)
