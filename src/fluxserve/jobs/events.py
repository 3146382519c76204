"""Live job events for server-sent-event streams: queued, progress, preview, partial, end.

In-process and in memory: a stream that reconnects after a restart gets the job's state from
the store (its terminal event is always rebuilt from the job row), not the old previews."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

MAX_HISTORY = 256


@dataclass
class Event:
    """One event of a job's stream; ``id`` counts up per job."""

    id: int
    type: str  # "progress", "preview", "partial" or "end"
    data: dict[str, Any] = field(default_factory=dict)


class JobEvents:
    """Per-job event history and subscribers, on one event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._history: dict[str, list[Event]] = {}
        self._subscribers: dict[str, list[asyncio.Queue[Event]]] = {}
        self._seq: dict[str, int] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events on ``loop`` (the server's); before this, publishing does nothing."""
        self._loop = loop

    def has_subscribers(self, job_id: str) -> bool:
        """Whether anyone is listening to ``job_id`` (previews are only made for listeners)."""
        return bool(self._subscribers.get(job_id))

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
        self._seq[job_id] = seq
        event = Event(seq, type, data)
        history = self._history.setdefault(job_id, [])
        if type == "preview":  # keep only the newest preview for replay
            history[:] = [e for e in history if e.type != "preview"]
        history.append(event)
        del history[:-MAX_HISTORY]
        for q in self._subscribers.get(job_id, []):
            q.put_nowait(event)
        if type == "end":
            self._loop.call_later(300, self.forget, job_id)  # type: ignore[union-attr]

    def forget(self, job_id: str) -> None:
        """Drop a job's history."""
        self._history.pop(job_id, None)
        self._seq.pop(job_id, None)

    async def subscribe(self, job_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Buffered events with an id above ``after``, then live ones, until ``end``."""
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.setdefault(job_id, []).append(q)
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
