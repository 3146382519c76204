"""The app factory: settings in, a FastAPI app out (backends, service, engine, worker included)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fluxserve import __version__
from fluxserve.api.bfl import make_router, render_result
from fluxserve.api.credits import router as credits_router
from fluxserve.api.errors import install_error_handlers
from fluxserve.api.jobs import router as jobs_router
from fluxserve.api.loras import router as loras_router
from fluxserve.api.middleware import BodyLimit
from fluxserve.api.openai import router as openai_router
from fluxserve.api.service_routes import router as service_router
from fluxserve.api.state import AppState
from fluxserve.backends import open_backends
from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog
from fluxserve.engines import Engine
from fluxserve.images import ImageLimits
from fluxserve.jobs import JobPolicy, JobService, Worker
from fluxserve.jobs.webhooks import WebhookDispatcher
from fluxserve.loras import LoraLibrary
from fluxserve.safety import Moderator, OpenNSFWClassifier
from fluxserve.settings import Settings
from fluxserve.upsampling import BuiltinUpsampler, ChatUpsampler, PromptUpsampler

log = logging.getLogger("fluxserve")


def _upsampler(settings: Settings) -> PromptUpsampler:
    if settings.upsampler != "chat":
        return BuiltinUpsampler()
    if not settings.upsampler_url:
        raise ValueError("upsampler = 'chat' needs upsampler_url (an OpenAI-compatible base URL)")
    return ChatUpsampler(
        settings.upsampler_url,
        settings.upsampler_model,
        settings.upsampler_api_key,
        settings.upsampler_timeout_s,
    )


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. ``engine`` defaults to the diffusers FLUX engine."""
    backends = open_backends(settings)
    catalog = ModelCatalog.from_settings(settings)
    from fluxserve.engines.checkpoints import apply_checkpoint_defaults

    apply_checkpoint_defaults(settings, catalog)  # family defaults, from files already here
    moderator = Moderator(
        enabled=settings.moderation_enabled,
        thresholds=settings.moderation_thresholds,
        image_thresholds=settings.moderation_image_thresholds,
        classifier=OpenNSFWClassifier() if settings.moderation_enabled else None,
    )
    service = JobService(
        backends.jobs,
        backends.queue,
        backends.webhooks,
        backends.storage,
        moderator,
        _upsampler(settings),
        scene_models=frozenset(e.id for e in catalog if e.checkpoint == BUILTIN_CHECKPOINT),
        policy=JobPolicy(settings.max_queued_jobs, settings.max_attempts, settings.retention_s),
    )
    loras = LoraLibrary(settings.lora_dirs)
    for directory in settings.lora_dirs:
        if not directory.is_dir():
            log.warning("lora_dirs: %s is not a directory; it holds no LoRAs", directory)
    if engine is None:
        from fluxserve.engines.checkpoints import checkpoint_resolver
        from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

        engine = DiffusersFluxEngine(
            checkpoint_resolver(settings, catalog),
            settings.device,
            settings.dtype,
            loras=loras,
            lora_cache_size=settings.lora_cache_size,
        )
    worker = Worker(service, engine, catalog)
    state = AppState(
        settings=settings,
        catalog=catalog,
        service=service,
        worker=worker,
        storage=backends.storage,
        signer=backends.signer,
        keys=backends.keys,
        limits=ImageLimits(
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
            fetch_timeout_s=settings.fetch_timeout_s,
            allow_private_urls=settings.allow_private_urls,
            max_aspect_ratio=settings.max_input_aspect_ratio,
            max_working_pixels=settings.max_input_working_pixels,
        ),
        loras=loras,
    )

    def render_for_webhook(job_id: str, base_url: str) -> dict[str, Any] | None:
        job = service.store.get(job_id)
        if job is None:
            return None
        return render_result(state, job, settings.public_url or base_url).model_dump()

    dispatcher = WebhookDispatcher(
        backends.webhooks,
        render_for_webhook,
        settings.allow_private_urls,
        base_delay_s=settings.webhook_retry_base_s,
        max_delay_s=settings.webhook_max_delay_s,
        max_attempts=settings.webhook_max_attempts,
        timeout_s=settings.webhook_timeout_s,
    )

    async def load_then_work() -> None:
        # One broken checkpoint takes down only the models that use it.
        errors: list[str] = []
        for checkpoint in sorted(catalog.checkpoints()):
            try:
                await asyncio.to_thread(engine.load, checkpoint)
            except Exception as exc:
                reason = str(exc) if exc.__class__.__name__ == "CheckpointError" else repr(exc)
                ids = catalog.mark_unavailable(checkpoint, reason)
                log.error("models %s are unavailable: %s", ", ".join(ids), reason)
                errors.append(reason)
        apply_checkpoint_defaults(settings, catalog)  # hub checkpoints downloaded by the load
        if len(catalog.unavailable_models()) == len(catalog.ids()):
            state.load_error = "; ".join(errors)
            return
        state.ready = True
        await worker.run()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.events.bind(asyncio.get_running_loop())
        service.on_webhook = dispatcher.wakeup.set
        service.recover()
        tasks = [
            asyncio.create_task(load_then_work()),
            asyncio.create_task(service.sweep_forever(settings.sweep_interval_s)),
            asyncio.create_task(dispatcher.run()),
        ]
        try:
            yield
        finally:
            worker.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            backends.close()

    app = FastAPI(
        title="fluxserve",
        version=__version__,
        description="Self-hosted FLUX behind the BFL async API and the OpenAI Images API.",
        lifespan=lifespan,
    )
    app.state.fluxserve = state
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(credits_router)
    app.include_router(make_router(list(catalog)))
    app.include_router(jobs_router)
    app.include_router(service_router)
    from fluxserve.web import router as web_router  # here: the page's routes import api.auth

    app.include_router(web_router)  # the playground page at /
    app.include_router(loras_router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
