"""Engine workers: claim jobs, run the engine off the event loop, store results.

:class:`Worker` runs one engine. :class:`EngineWorkers` runs one per device (``gpus``): with
SQLite each claims from the in-process queue; with PostgreSQL each is a procrastinate worker
that takes only the models its engine loaded (:class:`~fluxserve.backends.interfaces.JobDispatch`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from fluxserve.catalog import ModelCatalog
from fluxserve.engines import Engine, EngineModerated, EngineRequest, JobCancelled
from fluxserve.images import encode_image
from fluxserve.jobs.models import Job, JobStatus
from fluxserve.jobs.service import JobService
from fluxserve.safety import Decision

if TYPE_CHECKING:
    from fluxserve.backends.interfaces import JobDispatch
    from fluxserve.loras import LoraLibrary
    from fluxserve.settings import Settings

log = logging.getLogger("fluxserve.worker")
PREVIEW_SIDE = 256
T = TypeVar("T")


def partial_steps(steps: int, partial_images: int) -> set[int]:
    """The steps after which OpenAI-style partial images are sent (evenly spread)."""
    return {max(1, round(k * steps / (partial_images + 1))) for k in range(1, partial_images + 1)}


def worker_name(device: str, index: int) -> str:
    """``cpu#0@host:pid``: which engine, on which machine and process, ran a job."""
    return f"{device}#{index}@{socket.gethostname()}:{os.getpid()}"


def worker_devices(gpus: Sequence[str], default: str) -> list[str]:
    """The devices of the ``gpus`` setting, one engine worker each: ``"0"`` is ``cuda:0``;
    anything else (``cpu``, ``cuda:1``, ``mps``) is taken as it is, repeats included (``cpu,cpu``
    runs two workers on the CPU). Empty: one worker on ``default`` (the ``device`` setting)."""
    return [f"cuda:{g}" if g.isdigit() else g for g in gpus] or [default]


@dataclass
class WorkerHealth:
    """Whether the job store answers the workers (shared by the workers of one process)."""

    healthy: bool = True
    last_error: str | None = None


class Worker:
    """Runs jobs one at a time on one engine. Store errors (a full disk, a lost database)
    never kill it: it logs, reports itself unhealthy (``/readyz`` answers 503), backs off and
    retries, and carries on when the store works again."""

    def __init__(
        self,
        service: JobService,
        engine: Engine,
        catalog: ModelCatalog,
        name: str = "worker",
        health: WorkerHealth | None = None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.catalog = catalog
        self.name = name
        """Shown in logs and recorded in each result it makes (``result.worker``)."""
        self.health = health or WorkerHealth()
        self._stopping = False

    @property
    def healthy(self) -> bool:
        """False while the job store fails; True again after the next successful call."""
        return self.health.healthy

    @property
    def last_error(self) -> str | None:
        """The store's last error while unhealthy."""
        return self.health.last_error

    def stop(self) -> None:
        """Finish the current job, then return from :meth:`run`."""
        self._stopping = True
        self.service.work_available.set()

    async def run(self) -> None:
        """Loop until stopped: claim the next queued job and run it."""
        while not self._stopping:
            job = await self._store_call(self.service.queue.claim_next)
            if job is None:
                self.service.work_available.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.service.work_available.wait(), timeout=1.0)
                continue
            await self.run_job(job)

    async def _store_call(self, call: Callable[[], T]) -> T:
        """``call()`` until it succeeds (or the worker stops), backing off 0.1 s .. 5 s."""
        delay = 0.1
        while True:
            try:
                value = call()
            except Exception as exc:
                self.health.healthy = False
                self.health.last_error = f"{exc.__class__.__name__}: {exc}"
                log.error("job store failed (%s); retrying in %.1f s", self.last_error, delay)
                if self._stopping:
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self.health.healthy = True
            self.health.last_error = None
            return value

    async def run_dispatched(self, job_id: str, dispatch: JobDispatch) -> None:
        """Run the job ``dispatch`` handed us: claim it and run it; end it as Error instead
        when it was started ``max_attempts`` times already; do nothing if it has ended (a
        cancel while it was queued)."""
        claims = dispatch.claims
        job = await self._store_call(lambda: self.service.store.get(job_id))
        if job is None or job.terminal:
            return
        if job.attempts >= self.service.policy.max_attempts:
            if await self._store_call(lambda: claims.give_up(job_id)):
                log.error("job %s was started %d times without finishing; giving up", job_id, job.attempts)
                self.service.job_ended(job_id)
            return
        claimed = await self._store_call(lambda: claims.claim(job_id, self.name))
        if claimed is not None:
            await self.run_job(claimed)

    async def run_job(self, job: Job) -> None:
        """Run one claimed job to its end, and record that end whatever happens."""
        store = self.service.store
        progress: dict[str, int] = {"done": 0}
        self.service.events.start_run(job.id, job.attempts)
        try:
            result, decision = await asyncio.to_thread(self._execute, job, progress)
        except JobCancelled:
            details = {"error": "cancelled", "steps_done": progress["done"], "steps": job.spec.steps}
            await self._store_call(
                lambda: store.finish(job.id, job.attempts, JobStatus.ERROR, details=details)
            )
        except EngineModerated as mod:  # an upstream provider's moderation: as our own would end
            status = JobStatus.REQUEST_MODERATED if mod.stage == "request" else JobStatus.CONTENT_MODERATED
            public = {"moderation": {"category": mod.category, "source": mod.source}}
            blocked = {"allowed": False, "source": mod.source, "category": mod.category}
            audit = [*(job.moderation or []), blocked]
            await self._store_call(
                lambda: store.finish(job.id, job.attempts, status, details=public, moderation=audit)
            )
        except Exception as exc:
            log.error("job %s failed: %s", job.id, "".join(traceback.format_exception(exc)))
            error = {"error": f"{exc.__class__.__name__}: {exc}"}
            await self._store_call(lambda: store.finish(job.id, job.attempts, JobStatus.ERROR, details=error))
        else:
            audit = [*(job.moderation or []), decision.audit()]
            if not decision.allowed:
                public = {"moderation": decision.public()}
                await self._store_call(
                    lambda: store.finish(
                        job.id, job.attempts, JobStatus.CONTENT_MODERATED, details=public, moderation=audit
                    )
                )
            elif not await self._store_call(
                lambda: store.finish(job.id, job.attempts, JobStatus.READY, result=result, moderation=audit)
            ):
                log.warning("job %s was no longer ours to finish (attempt %s)", job.id, job.attempts)
        await self._store_call(lambda: self.service.job_ended(job.id))

    def _execute(self, job: Job, progress: dict[str, int]) -> tuple[dict[str, Any], Decision]:
        """Blocking part of a run (in a worker thread): generate, moderate, encode, store."""
        spec = job.spec
        store = self.service.store
        events = self.service.events
        entry = self.catalog.get(spec.model)
        if entry is None:
            raise ValueError(f"model {spec.model!r} is no longer in the catalog")
        images = [
            Image.open(io.BytesIO(self.service.storage.get(key))).convert("RGB") for key in spec.input_images
        ]
        mask = (
            Image.open(io.BytesIO(self.service.storage.get(spec.mask_image))).convert("L")
            if spec.mask_image
            else None
        )
        last = [0.0]
        partials = partial_steps(spec.steps, spec.partial_images)
        preview_every = max(1, spec.steps // 5)

        def on_step(done: int, total: int) -> None:
            progress["done"] = done
            now = time.monotonic()
            if done == total or now - last[0] > 0.2:  # keep DB writes to a few per second
                last[0] = now
                # Generation is most of a job; the rest (encode, store) is the last 5 %.
                try:
                    store.set_progress(job.id, round(0.95 * done / total, 4))
                except Exception as exc:  # progress is best effort; the run goes on
                    log.warning("could not record progress of job %s: %s", job.id, exc)
            events.publish(
                job.id, "progress", {"step": done, "steps": total, "fraction": round(done / total, 4)}
            )

        def want_preview(done: int) -> bool:
            return done in partials or (
                events.has_subscribers(job.id) and done % preview_every == 0 and done < spec.steps
            )

        def on_preview(done: int, previews: list[Image.Image]) -> None:
            thumb = previews[0].copy()
            thumb.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            buf = io.BytesIO()
            thumb.convert("RGB").save(buf, format="JPEG", quality=80)
            events.publish(
                job.id,
                "preview",
                {"step": done, "steps": spec.steps, "image": base64.b64encode(buf.getvalue()).decode()},
            )
            if done in partials:
                full = previews[0].resize((spec.width, spec.height), Image.Resampling.BILINEAR)
                data = encode_image(full, spec.output_format, spec.output_compression)
                events.publish(
                    job.id,
                    "partial",
                    {"index": sorted(partials).index(done), "b64_json": base64.b64encode(data).decode()},
                )

        t0 = time.time()
        extras: dict[str, Any] = {}  # what the engine tells us to record (an upstream's cost)
        outputs = self.engine.generate(
            EngineRequest(
                checkpoint=entry.checkpoint,
                prompt=spec.prompt,
                width=spec.width,
                height=spec.height,
                seed=spec.seed,
                steps=spec.steps,
                guidance=spec.guidance,
                num_images=spec.num_images,
                images=images,
                loras=spec.loras,
                mask=mask,
                extras=extras,
            ),
            on_step=on_step,
            cancelled=lambda: store.cancel_requested(job.id),
            want_preview=want_preview,
            on_preview=on_preview,
        )
        t1 = time.time()
        # Output moderation: a blocked image is never stored.
        decision = self.service.moderator.check_images(outputs, spec.safety_tolerance, "output_image")
        if not decision.allowed:
            return {}, decision
        files = []
        for i, img in enumerate(outputs):
            key = f"results/{job.id}/{i}.{spec.output_format}"
            self.service.storage.put(key, encode_image(img, spec.output_format, spec.output_compression))
            files.append(key)
        t2 = time.time()
        return {
            "files": files,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "width": spec.width,
            "height": spec.height,
            "engine_s": round(t1 - t0, 4),
            "encode_s": round(t2 - t1, 4),
            "worker": self.name,
            **extras,
        }, decision


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
    ) -> None:
        unknown = [m for m in models if catalog.get(m) is None]
        if unknown:
            raise ValueError(f"worker_models names models not in the catalog: {', '.join(unknown)}")
        self.service = service
        self.catalog = catalog
        self.dispatch = dispatch
        self.models = list(models) or catalog.ids()
        self.health = WorkerHealth()
        self.workers = [Worker(service, engine, catalog, name, self.health) for name, engine in engines]

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
            await asyncio.gather(*(w.run() for w in self.workers))
            return
        models = self.loaded_models()
        await asyncio.gather(
            *(
                dispatch.run_worker(w.name, models, lambda job_id, w=w: w.run_dispatched(job_id, dispatch))  # type: ignore[misc]
                for w in self.workers
            )
        )

    def stop(self) -> None:
        """Let in-process workers finish their job and return (dispatched ones stop when
        :meth:`run` is cancelled)."""
        for w in self.workers:
            w.stop()


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


def run_worker_process(settings: Settings) -> int:
    """``fluxserve worker``: engine workers (one per device in ``gpus``) that take jobs from the
    shared PostgreSQL database, with live events and the stalled-job reaper, and no HTTP API.
    SIGTERM or SIGINT lets the running jobs finish, then returns. Returns the exit status."""
    return asyncio.run(_worker_main(settings))


async def _worker_main(settings: Settings) -> int:
    import signal

    from fluxserve.accounts import Accounting, open_account_store
    from fluxserve.accounts.ledger import AccountLimits
    from fluxserve.backends import open_backends
    from fluxserve.jobs.service import JobPolicy
    from fluxserve.loras import LoraLibrary
    from fluxserve.safety import Moderator
    from fluxserve.upstreams import with_upstreams

    backends = open_backends(settings)
    dispatch = backends.dispatch
    if dispatch is None:
        backends.close()
        log.error("fluxserve worker needs database_url (PostgreSQL)")
        return 2
    catalog = ModelCatalog.from_settings(settings)
    moderator = Moderator.from_settings(settings)
    service = JobService(
        backends.jobs,
        backends.queue,
        backends.webhooks,
        backends.storage,
        moderator,
        policy=JobPolicy(settings.max_queued_jobs, settings.max_attempts, settings.retention_s),
        bus=backends.bus,
    )
    # Jobs end here: their credit holds are settled or released here too (as on a server).
    accounts = open_account_store(settings)
    limits = AccountLimits(max_active_max_models=settings.account_max_active_max_models)
    service.accounting = Accounting(accounts, catalog, limits)
    loras = LoraLibrary(settings.lora_dirs)
    engines: list[tuple[str, Engine]] = [
        (
            worker_name(device, i),
            with_upstreams(diffusers_engine(settings, catalog, device, loras), settings, catalog),
        )
        for i, device in enumerate(worker_devices(settings.gpus, settings.device))
    ]
    try:
        workers = EngineWorkers(service, catalog, engines, dispatch, settings.worker_models)
    except ValueError as exc:
        log.error("%s", exc)
        backends.close()
        accounts.close()
        return 2
    loop = asyncio.get_running_loop()
    service.events.bind(loop)
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    side = [
        asyncio.create_task(service.events.run()),
        asyncio.create_task(dispatch.reap_forever(settings.max_attempts, service.job_ended)),
    ]
    status = 0
    try:
        error = await workers.load()
        if error is not None:
            log.error("no model could be loaded: %s", error)
            status = 1
        else:
            names = ", ".join(w.name for w in workers.workers)
            print(f"fluxserve worker ready: {names} take {', '.join(workers.loaded_models())}", flush=True)
            await workers.run()
    except asyncio.CancelledError:
        log.info("stopping: the running jobs finish first")
    finally:
        for t in side:
            t.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        await dispatch.close()
        backends.close()
        accounts.close()
    return status
