"""Live job events for server-sent-event streams: queued, progress, preview, partial, end.

Each process keeps a short history per job and its subscribers, on its event loop. An
:class:`~fluxserve.stores.EventBus` carries events between processes: with
:class:`~fluxserve.stores.LocalBus` (SQLite, one process) nothing leaves the process; with PostgreSQL,
LISTEN/NOTIFY brings a job's events from the worker that runs it to every API node. A stream
that reconnects after a restart gets the job's state from the store (its terminal event is
always rebuilt from the job row), not the old previews."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fluxserve.stores import EventBus, LocalBus

MAX_HISTORY = 256
RUN_IDS = 1_000_000
"""Event ids one run of a job may use (a job's steps send far fewer)."""


@dataclass
class Event:
    """One event of a job's stream; ``id`` counts up per job."""

    id: int
    type: str  # "progress", "preview", "partial" or "end"
    data: dict[str, Any] = field(default_factory=dict)


class JobEvents:
    """Per-job event history and subscribers, on one event loop, shared through a bus."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus: EventBus = bus or LocalBus()
        self.on_end: Callable[[str], None] | None = None
        """Called on the loop when another process announces the end of a job."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._history: dict[str, list[Event]] = {}
        self._subscribers: dict[str, list[asyncio.Queue[Event]]] = {}
        self._seq: dict[str, int] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events on ``loop`` (the server's); before this, publishing does nothing."""
        self._loop = loop

    async def run(self) -> None:
        """Receive other processes' events until cancelled (nothing to do in-process)."""
        await self.bus.run(self.receive, lambda: list(self._subscribers))

    def has_subscribers(self, job_id: str) -> bool:
        """Whether anyone, here or on another node, is listening to ``job_id`` (previews are
        only made for listeners)."""
        return bool(self._subscribers.get(job_id)) or self.bus.watched(job_id)

    def start_run(self, job_id: str, attempt: int) -> None:
        """A run of the job begins here (call on the loop): a re-run's events get ids above
        any of an earlier run's (attempt ``n`` counts from ``(n - 1) * RUN_IDS``), so a stream
        that resumes with ``Last-Event-ID`` across a re-run on another worker misses nothing."""
        base = (attempt - 1) * RUN_IDS
        if self._seq.get(job_id, 0) < base:
            self._seq[job_id] = base

    def publish(self, job_id: str, type: str, data: dict[str, Any] | None = None) -> None:
        """Publish from any thread."""
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._publish(job_id, type, data or {})
        else:
            self._loop.call_soon_threadsafe(self._publish, job_id, type, data or {})

    def _publish(self, job_id: str, type: str, data: dict[str, Any]) -> None:
        seq = self._seq.get(job_id, 0) + 1
        self._record(job_id, Event(seq, type, data))
        self.bus.send(job_id, seq, type, data)

    def receive(self, job_id: str, event_id: int, type: str, data: dict[str, Any]) -> None:
        """An event published by another process (on the loop): keep it and pass it on."""
        self._record(job_id, Event(event_id, type, data))
        if type == "end" and self.on_end is not None:
            self.on_end(job_id)

    def _record(self, job_id: str, event: Event) -> None:
        self._seq[job_id] = max(self._seq.get(job_id, 0), event.id)
        history = self._history.setdefault(job_id, [])
        if event.type == "preview":  # keep only the newest preview for replay
            history[:] = [e for e in history if e.type != "preview"]
        history.append(event)
        del history[:-MAX_HISTORY]
        for q in self._subscribers.get(job_id, []):
            q.put_nowait(event)
        if event.type == "end" and self._loop is not None:
            self._loop.call_later(300, self.forget, job_id)

    def forget(self, job_id: str) -> None:
        """Drop a job's history."""
        self._history.pop(job_id, None)
        self._seq.pop(job_id, None)

    async def subscribe(self, job_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Buffered events with an id above ``after``, then live ones, until ``end``."""
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.setdefault(job_id, []).append(q)
        self.bus.watch(job_id)
        try:
            for e in list(self._history.get(job_id, [])):
                if e.id > after:
                    q.put_nowait(e)
            while True:
                event = await q.get()
                yield event
                if event.type == "end":
                    return
        finally:
            subs = self._subscribers.get(job_id, [])
            if q in subs:
                subs.remove(q)
            if not subs:
                self._subscribers.pop(job_id, None)
