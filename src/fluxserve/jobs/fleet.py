"""The engine workers of one process: one :class:`~fluxserve.jobs.worker.Worker` per device
(``gpus``), loading their checkpoints at start (in the server, and in ``fluxserve worker``,
:func:`fluxserve.system.run_worker_process`, a process of them that takes jobs from the shared
PostgreSQL database).

With SQLite each worker claims from the in-process queue; with PostgreSQL each is a
procrastinate worker that takes only the models its engine loaded
(:class:`~fluxserve.stores.JobDispatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from fluxserve.catalog import ModelCatalog
from fluxserve.engines import Engine, EngineRequest
from fluxserve.jobs.batching import BatchPolicy
from fluxserve.jobs.service import JobService
from fluxserve.jobs.worker import Worker, WorkerHealth

if TYPE_CHECKING:
    from fluxserve.loras import LoraLibrary
    from fluxserve.settings import Settings
    from fluxserve.stores import JobDispatch

log = logging.getLogger("fluxserve.worker")
LANE_SIZE = 16
"""Jobs the upstream lane of one process runs at once (setting ``overflow_concurrency``)."""


def worker_name(device: str, index: int) -> str:
    """``cpu#0@host:pid``: which engine, on which machine and process, ran a job."""
    return f"{device}#{index}@{socket.gethostname()}:{os.getpid()}"


def worker_devices(gpus: Sequence[str], default: str) -> list[str]:
    """The devices of the ``gpus`` setting, one engine worker each: ``"0"`` is ``cuda:0``;
    anything else (``cpu``, ``cuda:1``, ``mps``) is taken as it is, repeats included (``cpu,cpu``
    runs two workers on the CPU). Empty: one worker on ``default`` (the ``device`` setting)."""
    return [f"cuda:{g}" if g.isdigit() else g for g in gpus] or [default]


def batch_policy(settings: Settings) -> BatchPolicy:
    """The ``batch_size`` settings, global and per model."""
    per_model = {mid: o.batch_size for mid, o in settings.models.items() if o.batch_size is not None}
    return BatchPolicy(settings.batch_size, per_model)


class EngineWorkers:
    """The engine workers of one process, one per engine (device). ``models`` limits the
    models they take (PostgreSQL dispatch); empty means every model in the catalog."""

    def __init__(
        self,
        service: JobService,
        catalog: ModelCatalog,
        engines: Sequence[tuple[str, Engine]],
        dispatch: JobDispatch | None = None,
        models: Sequence[str] = (),
        batching: BatchPolicy | None = None,
        lane: Engine | None = None,
        lane_size: int = LANE_SIZE,
    ) -> None:
        unknown = [m for m in models if catalog.get(m) is None]
        if unknown:
            raise ValueError(f"worker_models names models not in the catalog: {', '.join(unknown)}")
        self.service = service
        self.catalog = catalog
        self.dispatch = dispatch
        self.models = list(models) or catalog.ids()
        self.health = WorkerHealth()
        self.workers = [
            Worker(service, engine, catalog, name, self.health, batching) for name, engine in engines
        ]
        # The upstream lane: the jobs overflow sends to an upstream, several at once (they
        # wait on the network, not on a GPU); its failures do not make the server unready.
        self.lane = (
            [Worker(service, lane, catalog, f"upstream#{i}", route="upstream") for i in range(lane_size)]
            if lane is not None
            else []
        )

    def overflow_models(self) -> list[str]:
        """Our models with ``route = "overflow"``: the ones the upstream lane takes."""
        return [m for m in self.models if (e := self.catalog.get(m)) is not None and e.overflow is not None]

    def local_workers(self, model: str) -> int | None:
        """How many of our workers take ``model`` (None with dispatch: other processes may)."""
        if self.dispatch is not None:
            return None
        return len(self.workers) if model in self.loaded_models() else 0

    def checkpoints(self) -> list[str]:
        """The checkpoints our models need, each once."""
        return sorted({e.checkpoint for m in self.models if (e := self.catalog.get(m)) is not None})

    async def load(self) -> str | None:
        """Load our checkpoints into every engine. One broken checkpoint takes down only the
        models that use it; returns the reasons when none of our models is left."""
        errors: list[str] = []
        for checkpoint in self.checkpoints():
            for worker in self.workers:
                try:
                    await asyncio.to_thread(worker.engine.load, checkpoint)
                except Exception as exc:
                    reason = str(exc) if exc.__class__.__name__ == "CheckpointError" else repr(exc)
                    ids = self.catalog.mark_unavailable(checkpoint, reason)
                    log.error("models %s are unavailable: %s", ", ".join(ids), reason)
                    errors.append(reason)
                    break
        if self.lane:
            for model in self.overflow_models():
                entry = self.catalog.get(model)
                assert entry is not None and entry.overflow is not None
                try:
                    await asyncio.to_thread(self.lane[0].engine.load, entry.overflow.checkpoint)
                except Exception as exc:  # its jobs then fail over to the local queue
                    log.error("model %s cannot overflow to its upstream: %s", model, exc)
        if not self.loaded_models():
            return "; ".join(errors) or "no models to serve"
        return None

    def loaded_models(self) -> list[str]:
        """Our models whose checkpoint loaded: the only ones we take."""
        unavailable = self.catalog.unavailable_models()
        return [m for m in self.models if m not in unavailable]

    async def run(self) -> None:
        """Run every worker until cancelled (or stopped, in-process)."""
        dispatch = self.dispatch
        if dispatch is None:
            await asyncio.gather(*(w.run() for w in [*self.workers, *self.lane]))
            return
        models, overflow = self.loaded_models(), self.overflow_models()
        await asyncio.gather(
            *(
                dispatch.run_worker(
                    w.name,
                    overflow if w.route else models,
                    lambda job_id, w=w: w.run_dispatched(job_id, dispatch),  # type: ignore[misc]
                    w.route,
                )
                for w in [*self.workers, *(self.lane if overflow else [])]
            )
        )

    def stop(self) -> None:
        """Let in-process workers finish their job and return (dispatched ones stop when
        :meth:`run` is cancelled)."""
        for w in [*self.workers, *self.lane]:
            w.stop()

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Wait (up to ``timeout_s``) for generated results still being stored."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(w.drain() for w in [*self.workers, *self.lane])), timeout_s
            )


class NoEngine:
    """The engine of a process that runs none (a stateless API node, ``serve --no-worker``):
    its workers never take a job, so it is never asked to generate."""

    def load(self, checkpoint: str) -> None:
        """Nothing to load."""

    def generate(self, request: EngineRequest, *args: Any, **kwargs: Any) -> list[Image.Image]:
        """Never called: an API node takes no jobs."""
        raise RuntimeError("this process runs no engine (an API node started with --no-worker)")


def diffusers_engine(settings: Settings, catalog: ModelCatalog, device: str, loras: LoraLibrary) -> Engine:
    """The diffusers FLUX engine for one device, as the settings describe it: the server's
    workers and ``fluxserve worker``'s are made here alike."""
    from fluxserve.engines.checkpoints import checkpoint_resolver
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    return DiffusersFluxEngine(
        checkpoint_resolver(settings, catalog),
        device,
        settings.dtype,
        loras=loras,
        lora_cache_size=settings.lora_cache_size,
        prompt_cache_size=settings.prompt_cache_size,
    )
