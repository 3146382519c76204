"""Webhook delivery: signed POSTs of get_result's answer, retried with exponential backoff by a
dispatcher task that never blocks the generation worker. Deliveries and attempts are kept by a
:class:`~fluxserve.stores.WebhookStore`, so they survive restarts.

Delivery is at least once: every POST of one delivery carries the same
``X-Fluxserve-Delivery`` id, by which a receiver drops repeats (after a crash between a
receiver's 2xx and our record of it, the delivery is sent again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from fluxserve.client.webhooks import (
    BFL_SIGNATURE_HEADER,
    DELIVERY_HEADER,
    SECRET_HEADER,
    SIGNATURE_HEADER,
    sign,
    sign_bfl,
    verify_signature,
)
from fluxserve.netguard import UrlRefused, check_url, guarded_client
from fluxserve.records import WebhookDelivery
from fluxserve.stores import WebhookStore

log = logging.getLogger("fluxserve.webhooks")
# The signature scheme lives in the SDK, which receivers use to verify what this module sends.
verify = verify_signature
"""Check a signature header as a receiver should: right MAC, recent timestamp."""


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
        self._unrecorded: set[str] = set()

    def delay(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (doubling, capped)."""
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))

    async def run(self) -> None:
        """Deliver due webhooks until cancelled; store errors are logged and retried."""
        # The guarded client connects to the very address it checked (no DNS rebinding).
        async with guarded_client(self.allow_private, self.timeout_s) as client:
            while True:
                try:
                    if self._unrecorded:
                        self.store.recover()
                        self._unrecorded.clear()
                    for delivery in self.store.due():
                        task = asyncio.create_task(self._deliver(client, delivery))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                except Exception:
                    log.exception("webhook store failed; retrying")
                    await asyncio.sleep(1.0)
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=0.25)

    async def _deliver(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        async with self._sem:
            attempt = delivery.attempts + 1
            t0 = time.monotonic()
            status: int | None = None
            error: str | None = None
            permanent = False
            try:
                await check_url(delivery.url, self.allow_private)
                body_obj = self.render(delivery.job_id, delivery.base_url)
                if body_obj is None:
                    raise LookupError("the job no longer exists")
                now = int(time.time())
                # BFL's bodies carry the delivery's time; its signature has none of its own.
                body_obj.setdefault("timestamp", now)
                body = json.dumps(body_obj, separators=(",", ":")).encode()
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "fluxserve-webhooks",
                    DELIVERY_HEADER: delivery.id,
                }
                if delivery.secret:
                    # Both signatures are over the exact bytes POSTed below.
                    headers[SIGNATURE_HEADER] = sign(delivery.secret, now, body)
                    headers[BFL_SIGNATURE_HEADER] = sign_bfl(delivery.secret, body)
                    # BFL sends the secret itself: receivers written for BFL check this one. A
                    # secret that is no valid header value (non-ASCII, control characters) is
                    # left to the signature alone.
                    secret = delivery.secret
                    if secret.isascii() and secret.isprintable() and secret == secret.strip():
                        headers[SECRET_HEADER] = secret
                # One deadline for the whole POST: httpx's own timeout is per read.
                resp = await asyncio.wait_for(
                    client.post(delivery.url, content=body, headers=headers), self.timeout_s
                )
                status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except (UrlRefused, LookupError) as exc:
                error, permanent = str(exc), True
            except TimeoutError:
                error = f"no answer within {self.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{exc.__class__.__name__}: {exc}"[:300]
            except Exception as exc:  # whatever went wrong, the attempt ends and is recorded
                log.exception("webhook attempt for job %s broke", delivery.job_id)
                error = f"{exc.__class__.__name__}: {exc}"[:300]
            duration = time.monotonic() - t0
            if error is None:
                state, next_at = "delivered", 0.0
            elif permanent or attempt >= self.max_attempts:
                state, next_at = "failed", 0.0
                log.warning("webhook for job %s failed for good: %s", delivery.job_id, error)
            else:
                state, next_at = "pending", time.time() + self.delay(attempt)
            try:
                self.store.record(delivery.job_id, attempt, status, error, duration, state, next_at)
            except Exception:
                # The store is failing: leave the delivery to restart recovery rather than
                # let it sit in "sending" for this process's lifetime.
                log.exception("could not record webhook attempt for job %s", delivery.job_id)
                self._unrecorded.add(delivery.job_id)
