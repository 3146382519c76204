"""Fair share: where a new job goes in the queue, so that one account's batch of 500 does not
delay everyone else by 500 images.

Start-time fair queueing, decided once, when a job is created, as its place (``sort_at``) in
the one queue order every store already follows (SQLite and PostgreSQL claims, queue
positions, procrastinate priorities):

- Each job belongs to a *flow*: its share (a named account; a key without one counts as its
  own; jobs made with no key configured share one) and its lane (interactive OpenAI calls or
  queued BFL jobs), so the OpenAI-before-BFL priority keeps working inside fair share.
- The *fair clock* is the start tag of the latest job a worker took (the wall clock before any
  was taken). A job starts at ``max(clock, end of its flow's last job)`` and ends
  ``images / weight`` later: a flow with nothing queued starts at the clock, right behind at
  most one job of each other flow; a flow with a backlog starts after it.
- Its place is the start tag, plus ``batch_delay_s`` (counted on the fair clock: one image is
  one second of it) for queued BFL jobs.

Nothing is stored but three columns per job (flow, start, end), written in the transaction
that creates the job, so the order survives a crash and every node of a PostgreSQL deployment
computes the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ANONYMOUS = "anonymous"
"""The share of jobs made while no key was configured."""


@dataclass(frozen=True)
class FairShare:
    """Whose share of the engines a new job draws on, and how large that share is."""

    share: str
    """``account:<name>``, ``key:<id>`` or :data:`ANONYMOUS`."""
    weight: float = 1.0
    """Relative share: an account of weight 2 gets two images for every one of weight 1."""

    def flow(self, interactive: bool) -> str:
        """The flow key of a job of this share in its lane."""
        return f"{self.share}/{'interactive' if interactive else 'batch'}"


@dataclass(frozen=True)
class Place:
    """A new job's place in the queue, and its fair-share tags (None without fair share)."""

    sort_at: float
    flow: str | None = None
    start: float | None = None
    end: float | None = None


def place(
    *,
    created_at: float,
    interactive: bool,
    images: int,
    batch_delay_s: float,
    fair: FairShare | None,
    clock: Callable[[], float | None],
    flow_end: Callable[[str], float | None],
) -> Place:
    """Where a new job goes. Without ``fair``: by creation time, BFL jobs ``batch_delay_s``
    behind. With it: by start tag (see the module docs). ``clock`` returns the start tag of the
    latest job taken (None: none yet); ``flow_end`` the largest end tag of a flow's jobs (None:
    the flow has none). Both read the store inside the transaction that creates the job."""
    delay = 0.0 if interactive else batch_delay_s
    if fair is None:
        return Place(created_at + delay)
    flow = fair.flow(interactive)
    now = clock()
    start = created_at if now is None else now
    last = flow_end(flow)
    if last is not None:
        start = max(start, last)
    end = start + max(1, images) / max(fair.weight, 1e-6)
    return Place(start + delay, flow, start, end)
