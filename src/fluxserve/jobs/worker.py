"""One engine worker: claim jobs, run them on the engine off the event loop, store results.

The engine is kept busy: a job's results are moderated, encoded and stored off the engine's
path (at most ``MAX_FINISHING`` jobs wait for that) while the engine starts the next job; once
a run's denoising has begun, the prompt of the job next in the queue is encoded beside it; and
queued jobs that can share a pipeline call run as one batch (:mod:`fluxserve.jobs.batching`).
Storing off the path and batching apply to jobs claimed from the in-process queue; a job handed
out by a dispatch (PostgreSQL) runs alone and is stored before its task ends (see
:meth:`Worker.run_dispatched`). Where workers live (one per device, ``fluxserve worker``) is
:mod:`fluxserve.jobs.fleet`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from PIL import Image

from fluxserve.catalog import ModelCatalog
from fluxserve.engines import (
    Engine,
    EngineModerated,
    EngineRequest,
    JobCancelled,
    NotAccepted,
    generate_batch,
    prefetch,
)
from fluxserve.images import encode_image
from fluxserve.jobs.batching import PEEK, BatchPolicy, PrepareNext, batch_mates
from fluxserve.jobs.service import JobService
from fluxserve.records import Job, JobStatus
from fluxserve.safety import Decision
from fluxserve.stores import JobDispatch

log = logging.getLogger("fluxserve.worker")
PREVIEW_SIDE = 256
MAX_FINISHING = 2
"""Runs whose results may wait to be stored while the engine goes on (then it waits too)."""
T = TypeVar("T")


def partial_steps(steps: int, partial_images: int) -> set[int]:
    """The steps after which OpenAI-style partial images are sent (evenly spread)."""
    return {max(1, round(k * steps / (partial_images + 1))) for k in range(1, partial_images + 1)}


@dataclass
class WorkerHealth:
    """Whether the job store answers the workers (shared by the workers of one process)."""

    healthy: bool = True
    last_error: str | None = None


@dataclass
class Generated:
    """One job's images, fresh from the engine, with what its result records."""

    images: list[Image.Image]
    extras: dict[str, Any]
    engine_s: float
    batch: dict[str, Any] | None = None
    """``{"id", "jobs"}`` when it ran in one pipeline call with other jobs."""


class Worker:
    """Runs jobs on one engine, one run (a job, or a batch of jobs) at a time. Store errors (a
    full disk, a lost database) never kill it: it logs, reports itself unhealthy (``/readyz``
    answers 503), backs off and retries, and carries on when the store works again."""

    def __init__(
        self,
        service: JobService,
        engine: Engine,
        catalog: ModelCatalog,
        name: str = "worker",
        health: WorkerHealth | None = None,
        batching: BatchPolicy | None = None,
        route: str | None = None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.catalog = catalog
        self.name = name
        """Shown in logs and recorded in each result it makes (``result.worker``)."""
        self.health = health or WorkerHealth()
        self.batching = batching or BatchPolicy()
        self.route = route
        """The lane it takes jobs from: None, the local queue; ``upstream``, the jobs an
        overflow sent to an upstream (its engine is then the upstream engine)."""
        self._stopping = False
        self._finishing: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_FINISHING)

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
        """Loop until stopped: claim the next queued job (with its batch mates) and run it;
        then wait for the last results to be stored."""
        while not self._stopping:
            job = await self._store_call(functools.partial(self.service.queue.claim_next, self.route))
            if job is None:
                self.service.work_available.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.service.work_available.wait(), timeout=1.0)
                continue
            mates = await self._store_call(functools.partial(self._claim_mates, job))
            await self.run_batch([job, *mates])
        await self.drain()

    async def drain(self) -> None:
        """Wait until every generated result has been stored and its job ended."""
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

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

    def _claim_mates(self, job: Job) -> list[Job]:
        """Claim the queued jobs that join ``job``'s batch (none when batching is off)."""
        limit = self.batching.limit(job.spec.model)
        if limit <= job.spec.num_images or not hasattr(self.engine, "generate_batch"):
            return []
        claimed = []
        for mate in batch_mates(job, self.service.queue.peek(PEEK), limit):
            taken = self.service.queue.claim_queued(mate.id, self.name)
            if taken is not None:  # another worker may have taken it meanwhile
                claimed.append(taken)
        return claimed

    async def run_dispatched(self, job_id: str, dispatch: JobDispatch) -> None:
        """Run the job ``dispatch`` handed us: claim it, run it and store its results before
        returning; end it as Error instead when it was started ``max_attempts`` times already;
        do nothing if it has ended (a cancel while it was queued).

        One job per task, finished before the task returns: the dispatch's record of the running
        task is what brings the job back if this worker dies (the reaper), so neither a batch
        (its other jobs would have no running task) nor storing after the return is safe here."""
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
            await self.run_batch([claimed])
            await self.drain()

    async def run_batch(self, jobs: list[Job]) -> None:
        """Run claimed ``jobs`` (one job, or a batch) on the engine, and return once the engine
        is free: their results are then moderated, encoded and stored in the background, and
        every job's end is recorded whatever happens."""
        progress: dict[str, int] = {"done": 0}
        for job in jobs:
            self.service.events.start_run(job.id, job.attempts)
        try:
            outputs = await asyncio.to_thread(self._generate, jobs, progress)
        except NotAccepted as exc:  # nothing ran at the upstream: back to the local queue
            for job in jobs:
                if job.route is None:  # a forwarded model: no local engine to fall back on
                    log.error("job %s failed: %s", job.id, exc)
                    await self._end(
                        job, JobStatus.ERROR, details={"error": f"{exc.__class__.__name__}: {exc}"}
                    )
                else:
                    await self._reroute(job, str(exc))
        except JobCancelled:
            for job in jobs:
                details = {"error": "cancelled", "steps_done": progress["done"], "steps": job.spec.steps}
                await self._end(job, JobStatus.ERROR, details=details)
        except EngineModerated as mod:  # an upstream provider's moderation: as our own would end
            status = JobStatus.REQUEST_MODERATED if mod.stage == "request" else JobStatus.CONTENT_MODERATED
            blocked = {"allowed": False, "source": mod.source, "category": mod.category}
            for job in jobs:
                public = {"moderation": {"category": mod.category, "source": mod.source}}
                await self._end(job, status, details=public, moderation=[*(job.moderation or []), blocked])
        except Exception as exc:
            log.error("jobs %s failed: %s", [j.id for j in jobs], "".join(traceback.format_exception(exc)))
            for job in jobs:
                await self._end(job, JobStatus.ERROR, details={"error": f"{exc.__class__.__name__}: {exc}"})
        else:
            await self._slots.acquire()
            task = asyncio.create_task(self._finish(jobs, outputs))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def _finish(self, jobs: list[Job], outputs: list[Generated]) -> None:
        """Moderate, encode and store each job's images (in a thread), then record its end."""
        try:
            for job, out in zip(jobs, outputs, strict=True):
                cancelled = functools.partial(self.service.store.cancel_requested, job.id)
                if await self._store_call(cancelled):
                    # Cancelled after its last step, or while its batch ran on: images dropped.
                    details = {"error": "cancelled", "steps_done": job.spec.steps, "steps": job.spec.steps}
                    await self._end(job, JobStatus.ERROR, details=details)
                    continue
                try:
                    result, decision = await asyncio.to_thread(self._store_results, job, out)
                except Exception as exc:
                    log.error("job %s failed: %s", job.id, "".join(traceback.format_exception(exc)))
                    await self._end(
                        job, JobStatus.ERROR, details={"error": f"{exc.__class__.__name__}: {exc}"}
                    )
                    continue
                audit = [*(job.moderation or []), decision.audit()]
                if not decision.allowed:
                    public = {"moderation": decision.public()}
                    await self._end(job, JobStatus.CONTENT_MODERATED, details=public, moderation=audit)
                else:
                    # The engine's note that the picture only approximates the prompt (the
                    # embedded model) is for the user: it goes where the API shows it.
                    note = result.pop("approximation", None)
                    shown = {"approximation": note} if note else None
                    await self._end(job, JobStatus.READY, result=result, details=shown, moderation=audit)
        finally:
            self._slots.release()

    async def _reroute(self, job: Job, error: str) -> None:
        """Send ``job``, which its upstream did not accept, back to the local queue."""
        routing = {
            **(job.routing or {}),
            "served_by": "local",
            "reason": f"{(job.routing or {}).get('served_by')} did not accept it ({error}): queued here",
        }
        store = self.service.queue
        if await self._store_call(lambda: store.reroute(job.id, job.attempts, routing)):
            log.warning("job %s: the upstream did not accept it; back in the local queue", job.id)
            self.service.routed(replace(job, routing=routing))
            self.service.work_available.set()
        else:
            log.warning("job %s was no longer ours to send back (attempt %s)", job.id, job.attempts)

    async def _end(self, job: Job, status: JobStatus, **fields: Any) -> None:
        """Record the end of this run of ``job`` and what follows it (waiters, webhook, ledger)."""
        store = self.service.store
        if not await self._store_call(lambda: store.finish(job.id, job.attempts, status, **fields)):
            log.warning("job %s was no longer ours to finish (attempt %s)", job.id, job.attempts)
        await self._store_call(lambda: self.service.job_ended(job.id))

    def _generate(self, jobs: list[Job], progress: dict[str, int]) -> list[Generated]:
        """Blocking part of a run (in a worker thread): the engine's work, and nothing else."""
        store = self.service.store
        events = self.service.events
        requests = [self._request(job) for job in jobs]
        first = jobs[0].spec
        last = [0.0]
        prepare_next = PrepareNext(lambda: self._prepare_next({j.id for j in jobs}))

        def on_step(done: int, total: int) -> None:
            progress["done"] = done
            prepare_next(done, total)  # the next job's prompt is encoded while this run denoises
            now = time.monotonic()
            if done == total or now - last[0] > 0.2:  # keep DB writes to a few per second
                last[0] = now
                # Generation is most of a job; the rest (encode, store) is the last 5 %.
                for job in jobs:
                    try:
                        store.set_progress(job.id, round(0.95 * done / total, 4))
                    except Exception as exc:  # progress is best effort; the run goes on
                        log.warning("could not record progress of job %s: %s", job.id, exc)
            for job in jobs:
                events.publish(
                    job.id, "progress", {"step": done, "steps": total, "fraction": round(done / total, 4)}
                )

        t0 = time.time()
        if len(jobs) > 1:
            batches = generate_batch(
                self.engine,
                requests,
                on_step=on_step,
                cancelled=lambda: all(store.cancel_requested(j.id) for j in jobs),
            )
            engine_s = time.time() - t0  # the whole call: every job of the batch waited for it
            batch = {"id": uuid.uuid4().hex[:12], "jobs": len(jobs)}
            return [
                Generated(images, r.extras, engine_s, batch)
                for images, r in zip(batches, requests, strict=True)
            ]

        job = jobs[0]
        partials = partial_steps(first.steps, first.partial_images)
        preview_every = max(1, first.steps // 5)

        def want_preview(done: int) -> bool:
            return done in partials or (
                events.has_subscribers(job.id) and done % preview_every == 0 and done < first.steps
            )

        def on_preview(done: int, previews: list[Image.Image]) -> None:
            thumb = previews[0].copy()
            thumb.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            buf = io.BytesIO()
            thumb.convert("RGB").save(buf, format="JPEG", quality=80)
            events.publish(
                job.id,
                "preview",
                {"step": done, "steps": first.steps, "image": base64.b64encode(buf.getvalue()).decode()},
            )
            if done in partials:
                full = previews[0].resize((first.width, first.height), Image.Resampling.BILINEAR)
                data = encode_image(
                    full,
                    first.output_format,
                    first.output_compression,
                    png_level=self.service.policy.png_compress_level,
                )
                events.publish(
                    job.id,
                    "partial",
                    {"index": sorted(partials).index(done), "b64_json": base64.b64encode(data).decode()},
                )

        images = self.engine.generate(
            requests[0],
            on_step=on_step,
            cancelled=lambda: store.cancel_requested(job.id),
            want_preview=want_preview,
            on_preview=on_preview,
        )
        return [Generated(images, requests[0].extras, time.time() - t0)]

    def _request(self, job: Job, with_inputs: bool = True) -> EngineRequest:
        """The engine request of ``job``, its input images read from storage (unless
        ``with_inputs`` is false: the request is only prepared, not run)."""
        spec = job.spec
        entry = self.catalog.get(spec.model)
        if entry is None:
            raise ValueError(f"model {spec.model!r} is no longer in the catalog")
        storage = self.service.storage
        inputs = spec.input_images if with_inputs else ()
        images = [Image.open(io.BytesIO(storage.get(key))).convert("RGB") for key in inputs]
        mask = (
            Image.open(io.BytesIO(storage.get(spec.mask_image))).convert("L")
            if spec.mask_image and with_inputs
            else None
        )
        overflow = job.route == "upstream" and entry.overflow is not None
        return EngineRequest(
            checkpoint=entry.overflow.checkpoint if overflow and entry.overflow else entry.checkpoint,
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
        )

    def _prepare_next(self, running: set[str]) -> bool:
        """Encode the prompt of the first queued job (not one of ``running``) beside the run,
        where the engine can (best effort: a failure only loses the head start)."""
        try:
            for job in self.service.queue.peek(len(running) + 1):
                if job.id not in running and self.catalog.get(job.spec.model) is not None:
                    prefetch(self.engine, self._request(job, with_inputs=False))
                    return True
        except Exception as exc:
            log.warning("could not prepare the next job's prompt: %s", exc)
        return False

    def _store_results(self, job: Job, out: Generated) -> tuple[dict[str, Any], Decision]:
        """Moderate and encode ``job``'s images and store them (in a thread, off the engine's
        path). A blocked image is never stored."""
        spec = job.spec
        t1 = time.time()
        decision = self.service.moderator.check_images(out.images, spec.safety_tolerance, "output_image")
        if not decision.allowed:
            return {}, decision
        files = []
        for i, img in enumerate(out.images):
            key = f"results/{job.id}/{i}.{spec.output_format}"
            data = encode_image(
                img,
                spec.output_format,
                spec.output_compression,
                png_level=self.service.policy.png_compress_level,
            )
            self.service.storage.put(key, data)
            files.append(key)
        return {
            "files": files,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "width": spec.width,
            "height": spec.height,
            "engine_s": round(out.engine_s, 4),
            "encode_s": round(time.time() - t1, 4),
            "worker": self.name,
            **({"batch": out.batch} if out.batch else {}),
            **out.extras,
        }, decision
