"""Live job events between processes over PostgreSQL LISTEN/NOTIFY (the ``EventBus`` seam).

Every process LISTENs on two channels. ``fluxserve_events`` carries a job's events (progress,
previews, partial images, end) from the worker that runs it to every API node; an event too
big for a NOTIFY payload (8000 bytes: previews, partial images) is written to
``fluxserve_job_events`` and the notification names its row. ``fluxserve_watch`` says which
jobs someone streams, so the worker makes previews only for watched jobs. Notifications from
one connection arrive in the order sent, so a job's events keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from psycopg import AsyncConnection

log = logging.getLogger("fluxserve.events")
EVENTS_CHANNEL = "fluxserve_events"
WATCH_CHANNEL = "fluxserve_watch"
INLINE_MAX = 7000
"""Bigger payloads go through ``fluxserve_job_events`` (NOTIFY's limit is 8000 bytes)."""
WATCH_EVERY_S = 3.0
WATCH_TTL_S = 10.0
KEEP_EVENTS_S = 600


class PostgresEventBus:
    """``EventBus`` over LISTEN/NOTIFY on two dedicated connections (listen, send)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.origin = uuid.uuid4().hex[:12]
        """Who we are in the payloads: our own notifications come back, and are skipped."""
        self._outbox: asyncio.Queue[tuple[str, str, dict[str, Any]]] | None = None
        self._remote_watch: dict[str, float] = {}

    def send(self, job_id: str, event_id: int, type: str, data: dict[str, Any]) -> None:
        """Queue the event for the sender (best effort: dropped while the database is away)."""
        if self._outbox is not None:
            body = {"o": self.origin, "j": job_id, "i": event_id, "t": type, "d": data}
            self._outbox.put_nowait((EVENTS_CHANNEL, job_id, body))

    def watch(self, job_id: str) -> None:
        """Announce at once that a stream here watches ``job_id``."""
        if self._outbox is not None:
            self._outbox.put_nowait((WATCH_CHANNEL, job_id, {"o": self.origin, "j": job_id}))

    def watched(self, job_id: str) -> bool:
        """Whether another process announced a stream of ``job_id`` within the last 10 s."""
        return self._remote_watch.get(job_id, 0.0) > time.monotonic()

    async def run(
        self,
        deliver: Callable[[str, int, str, dict[str, Any]], None],
        watching: Callable[[], Iterable[str]],
    ) -> None:
        """Listen and send until cancelled; a lost connection is opened again after a pause."""
        self._outbox = asyncio.Queue()
        while True:
            try:
                async with (
                    await AsyncConnection.connect(self.url, autocommit=True) as listener,
                    await AsyncConnection.connect(self.url, autocommit=True) as conn,
                ):
                    await listener.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await listener.execute(f"LISTEN {WATCH_CHANNEL}")
                    receiving = asyncio.create_task(self._receive(listener, conn, deliver))
                    try:
                        await self._send(conn, watching)
                    finally:
                        receiving.cancel()
                        with contextlib.suppress(BaseException):
                            await receiving
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event bus lost the database (%s); connecting again in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _receive(
        self,
        listener: AsyncConnection[Any],
        conn: AsyncConnection[Any],
        deliver: Callable[[str, int, str, dict[str, Any]], None],
    ) -> None:
        async for note in listener.notifies():
            try:
                body = json.loads(note.payload)
                if body.get("o") == self.origin:
                    continue
                job_id = str(body["j"])
                if note.channel == WATCH_CHANNEL:
                    self._remote_watch[job_id] = time.monotonic() + WATCH_TTL_S
                    continue
                data = body.get("d")
                if "r" in body:
                    cur = await conn.execute(
                        "SELECT data FROM fluxserve_job_events WHERE id = %s", (body["r"],)
                    )
                    row = await cur.fetchone()
                    if row is None:
                        continue
                    data = row[0]
                deliver(job_id, int(body["i"]), str(body["t"]), data or {})
            except Exception:
                log.exception("bad event notification: %.200s", note.payload)

    async def _send(self, conn: AsyncConnection[Any], watching: Callable[[], Iterable[str]]) -> None:
        assert self._outbox is not None
        next_watch = next_clean = 0.0
        while True:
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + WATCH_EVERY_S
                for job_id in watching():
                    self.watch(job_id)
                self._remote_watch = {j: t for j, t in self._remote_watch.items() if t > now}
            if now >= next_clean:
                next_clean = now + 60
                await conn.execute(
                    "DELETE FROM fluxserve_job_events WHERE at < now() - make_interval(secs => %s)",
                    (KEEP_EVENTS_S,),
                )
            try:
                channel, job_id, body = await asyncio.wait_for(self._outbox.get(), timeout=1.0)
            except TimeoutError:
                continue
            payload = json.dumps(body, separators=(",", ":"))
            if len(payload) > INLINE_MAX:
                cur = await conn.execute(
                    "INSERT INTO fluxserve_job_events (job_id, data) VALUES (%s, %s::jsonb) RETURNING id",
                    (job_id, json.dumps(body.pop("d"))),
                )
                row = await cur.fetchone()
                assert row is not None
                payload = json.dumps({**body, "r": row[0]}, separators=(",", ":"))
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
