"""Overflow routing: a new job of a model with ``route = "overflow"`` waits for a local engine,
unless that wait is estimated to pass the model's ``overflow_wait_s``, in which case it goes to
the model's upstream (see docs/scheduling.md#overflow-routing).

The estimate is the model's queued and running jobs on the local queue times the median
engine time of its last 20 jobs made here, divided by the local workers that take it; a model
that no worker here takes (its checkpoint failed to load, say) always overflows, and one that
has not finished a job here yet queues locally until it has. The upstream lane has a wait too
(its queued and running jobs, every model's, times the median time of the model's last 20 jobs
made there, divided by the lane's slots, ``overflow_concurrency``): a job whose upstream wait
would be at least its local one stays local. An account's daily cap on what overflow may spend
(``overflow_credits_per_day``) keeps its jobs local once reached.

The decision goes on the job (``Job.routing``: ``served_by``, ``reason``,
``estimated_wait_s``), where get_result's ``details``, the jobs API and ``fluxserve usage``
show it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from fluxserve.accounts import Accounting
from fluxserve.catalog import ModelCatalog
from fluxserve.spec import GenerationSpec
from fluxserve.stores import JobQueue

LocalWorkers = Callable[[str], int | None]
"""How many local workers take a model (None: unknown, as on a PostgreSQL API node)."""


class OverflowRouter:
    """Decides where a new job of an overflow model runs."""

    def __init__(
        self,
        catalog: ModelCatalog,
        queue: JobQueue,
        accounting: Accounting | None = None,
        local_workers: LocalWorkers | None = None,
        lane_size: int = 16,
    ) -> None:
        self.catalog = catalog
        self.queue = queue
        self.accounting = accounting
        self.local_workers: LocalWorkers = local_workers or (lambda model: None)
        self.lane_size = lane_size
        """The upstream lane's slots in one process (``overflow_concurrency``)."""

    def decide(self, spec: GenerationSpec, owner: str | None) -> dict[str, Any] | None:
        """The routing of a new job: None for a model without overflow, else ``served_by``
        (``local`` or ``upstream:<name>``), the ``reason`` and ``estimated_wait_s``."""
        entry = self.catalog.get(spec.model)
        if entry is None or entry.overflow is None:
            return None
        overflow = entry.overflow
        workers = self.local_workers(spec.model)
        estimate: float | None = None
        if workers == 0:
            why = "no worker here takes this model"
        else:
            active, engine_s = self.queue.local_load(spec.model)
            if not engine_s:
                return _local(None, "no job of this model has finished here yet: no estimate")
            estimate = round(active * statistics.median(engine_s) / max(1, workers or 1), 3)
            if estimate <= overflow.wait_s:
                return _local(
                    estimate, f"estimated wait {estimate:g} s <= overflow_wait_s {overflow.wait_s:g}"
                )
            why = f"estimated wait {estimate:g} s > overflow_wait_s {overflow.wait_s:g}"
            upstream = self._upstream_wait(spec.model)
            if upstream is not None and upstream >= estimate:
                return _local(estimate, f"{why}, but the upstream lane's estimated wait is {upstream:g} s")
        if self.accounting is not None:
            refused = self.accounting.overflow_allowed(owner, spec)
            if refused is not None:
                return _local(estimate, f"{why}, but {refused}")
        return {"served_by": f"upstream:{overflow.upstream}", "reason": why, "estimated_wait_s": estimate}

    def _upstream_wait(self, model: str) -> float | None:
        """The estimated wait in the upstream lane; None before a job of ``model`` ran there."""
        active, engine_s = self.queue.upstream_load(model)
        if not engine_s:
            return None
        return round(active * statistics.median(engine_s) / self.lane_size, 3)


def _local(estimate: float | None, reason: str) -> dict[str, Any]:
    return {"served_by": "local", "reason": reason, "estimated_wait_s": estimate}
