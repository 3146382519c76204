"""The in-process worker: claims jobs, runs the engine off the event loop, stores results."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from fluxserve.catalog import ModelCatalog
from fluxserve.engines import Engine, EngineRequest, JobCancelled
from fluxserve.images import encode_image
from fluxserve.jobs.models import Job, JobStatus
from fluxserve.jobs.service import JobService
from fluxserve.safety import Decision

log = logging.getLogger("fluxserve.worker")
PREVIEW_SIDE = 256
T = TypeVar("T")


def partial_steps(steps: int, partial_images: int) -> set[int]:
    """The steps after which OpenAI-style partial images are sent (evenly spread)."""
    return {max(1, round(k * steps / (partial_images + 1))) for k in range(1, partial_images + 1)}


class Worker:
    """Runs queued jobs one at a time. Store errors (a full disk, a lost database) never kill
    it: it logs, reports itself unhealthy (``/readyz`` answers 503), backs off and retries,
    and carries on when the store works again."""

    def __init__(self, service: JobService, engine: Engine, catalog: ModelCatalog) -> None:
        self.service = service
        self.engine = engine
        self.catalog = catalog
        self.healthy = True
        """False while the job store fails; True again after the next successful call."""
        self.last_error: str | None = None
        self._stopping = False

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
                self.healthy = False
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                log.error("job store failed (%s); retrying in %.1f s", self.last_error, delay)
                if self._stopping:
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self.healthy = True
            self.last_error = None
            return value

    async def run_job(self, job: Job) -> None:
        """Run one claimed job to its end, and record that end whatever happens."""
        store = self.service.store
        progress: dict[str, int] = {"done": 0}
        try:
            result, decision = await asyncio.to_thread(self._execute, job, progress)
        except JobCancelled:
            details = {"error": "cancelled", "steps_done": progress["done"], "steps": job.spec.steps}
            await self._store_call(
                lambda: store.finish(job.id, job.attempts, JobStatus.ERROR, details=details)
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
        }, decision
