"""Request batching: queued jobs that can share one pipeline call run as one batch.

Jobs share a batch when they ask for the same model, size, step count, guidance and LoRA set,
and take no input images, mask or partial images; their prompts, seeds and image counts may
differ. A batch holds at most ``batch_size`` images (the setting, per model); 1 turns batching
off, which is the default until a benchmark on the GPU at hand shows that it pays.

Each image still starts from its own seed's noise (one generator per image), so every job gets
its own image. Batched arithmetic is not bit-for-bit that of a lone run: the same job gives the
same bytes each time it runs in a batch of the same size and make-up, and differs from its
lone run by rounding only (docs/models.md#keeping-the-gpu-busy gives the measured difference).

Beside a run, :class:`PrepareNext` prepares the next queued job (its prompt encoded) so the
engine starts it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from fluxserve.records import Job
from fluxserve.spec import GenerationSpec

PEEK = 64
"""Queued jobs looked at when filling a batch (the front of the queue, in order)."""


@dataclass(frozen=True)
class BatchPolicy:
    """How many images one pipeline call may hold, per model (1: no batching)."""

    default: int = 1
    per_model: Mapping[str, int] = field(default_factory=dict)

    def limit(self, model: str) -> int:
        """The batch size for ``model``."""
        return self.per_model.get(model, self.default)


def batch_key(spec: GenerationSpec) -> Hashable | None:
    """What jobs must share to run in one batch; None for a job that runs alone."""
    if spec.input_images or spec.mask_image or spec.partial_images:
        return None
    return (spec.model, spec.width, spec.height, spec.steps, spec.guidance, spec.loras)


def batch_mates(first: Job, queued: Sequence[Job], limit: int) -> list[Job]:
    """The queued jobs, in queue order, that may join ``first``'s batch of at most ``limit``
    images (a job that does not fit is passed over, not split)."""
    key = batch_key(first.spec)
    room = limit - first.spec.num_images
    if key is None or room <= 0:
        return []
    mates: list[Job] = []
    for job in queued:
        if job.id != first.id and job.spec.num_images <= room and batch_key(job.spec) == key:
            mates.append(job)
            room -= job.spec.num_images
            if room <= 0:
                break
    return mates


class PrepareNext:
    """Looks for the next job to prepare, in a daemon thread, from a run's first step on: at
    most one look at a time and one every ``every_s`` seconds, until one is found."""

    def __init__(self, work: Callable[[], bool], every_s: float = 0.25) -> None:
        self._work = work
        self._every_s = every_s
        self._found = False
        self._busy = False
        self._last = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        """A step callback: after step ``done`` of ``total``, maybe look (in a thread)."""
        now = time.monotonic()
        if done < total and not (self._found or self._busy) and now - self._last >= self._every_s:
            self._busy, self._last = True, now
            threading.Thread(target=self._run, name="fluxserve-prepare", daemon=True).start()

    def _run(self) -> None:
        try:
            self._found = self._work()
        finally:
            self._busy = False
