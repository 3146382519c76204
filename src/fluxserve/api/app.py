"""The API's app factory: settings in, a FastAPI app out (backends, service, engine, worker
included). The server adds the playground page on top (:func:`fluxserve.server.create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fluxserve import __version__
from fluxserve.api.admin import router as admin_router
from fluxserve.api.bfl import make_router, render_result
from fluxserve.api.credits import router as credits_router
from fluxserve.api.errors import install_error_handlers
from fluxserve.api.finetunes import make_finetune_router
from fluxserve.api.jobs import router as jobs_router
from fluxserve.api.loras import router as loras_router
from fluxserve.api.middleware import BodyLimit
from fluxserve.api.openai import router as openai_router
from fluxserve.api.service_routes import router as service_router
from fluxserve.api.state import AppState
from fluxserve.api.usage import router as usage_router
from fluxserve.engines import Engine
from fluxserve.images import ImageLimits
from fluxserve.jobs import Worker
from fluxserve.jobs.fleet import (
    EngineWorkers,
    NoEngine,
    batch_policy,
    worker_devices,
    worker_name,
)
from fluxserve.jobs.webhooks import WebhookDispatcher
from fluxserve.settings import Settings
from fluxserve.system import build_system
from fluxserve.upsampling import BuiltinUpsampler, ChatUpsampler, PromptUpsampler
from fluxserve.upstreams import with_upstreams

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
    """Build the API (every route but the playground page). ``engine`` defaults to the diffusers
    FLUX engine."""
    from fluxserve.engines.checkpoints import apply_checkpoint_defaults

    if settings.auth == "none" and not settings.loopback_only:
        raise ValueError(
            f'auth = "none" turns key checks off, so it is refused on {settings.host} (loopback only)'
        )
    system = build_system(settings, _upsampler(settings))
    backends, catalog, service, loras = system.backends, system.catalog, system.service, system.loras
    apply_checkpoint_defaults(settings, catalog)  # family defaults, from files already here
    for directory in settings.lora_dirs:
        if not directory.is_dir():
            log.warning("lora_dirs: %s is not a directory; it holds no LoRAs", directory)

    # One engine worker per device (``gpus``); none on a stateless API node (``--no-worker``).
    workers: EngineWorkers | None = None
    if settings.run_worker:
        devices = worker_devices(settings.gpus, settings.device)
        engines = [
            (worker_name(d, i), with_upstreams(engine, settings, catalog) if engine else system.engine(d))
            for i, d in enumerate(devices[: 1 if engine else None])
        ]
        workers = EngineWorkers(
            service,
            catalog,
            engines,
            backends.dispatch,
            settings.worker_models,
            batch_policy(settings),
            lane=system.lane(),
            lane_size=settings.overflow_concurrency,
        )
        worker = workers.workers[0]
        if service.router is not None:
            service.router.local_workers = workers.local_workers
    else:
        worker = Worker(service, NoEngine(), catalog, name="api")
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
        accounting=service.accounting,
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
        if workers is None:  # an API node: workers elsewhere load the models
            state.ready = True
            return
        # One broken checkpoint takes down only the models that use it.
        state.load_error = await workers.load()
        apply_checkpoint_defaults(settings, catalog)  # hub checkpoints downloaded by the load
        if state.load_error is None:
            state.ready = True
            await workers.run()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.events.bind(asyncio.get_running_loop())
        if settings.auth == "none":
            log.warning(
                'auth = "none": API key checks are OFF; anyone who can reach %s:%s may use this server',
                settings.host,
                settings.port,
            )
        service.on_webhook = dispatcher.wakeup.set
        service.recover()
        tasks = [
            asyncio.create_task(load_then_work()),
            asyncio.create_task(service.sweep_forever(settings.sweep_interval_s)),
            asyncio.create_task(dispatcher.run()),
            asyncio.create_task(service.events.run()),
        ]
        if backends.dispatch is not None:
            tasks.append(
                asyncio.create_task(backends.dispatch.reap_forever(settings.max_attempts, service.job_ended))
            )
        try:
            yield
        finally:
            if workers is not None:
                workers.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if workers is not None:
                await workers.drain()  # results generated before the stop are stored
            if backends.dispatch is not None:
                await backends.dispatch.close()
            system.close()

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
    app.include_router(make_finetune_router(list(catalog)))  # before the catch-all POST /v1/{model}
    app.include_router(make_router(list(catalog)))
    app.include_router(jobs_router)
    app.include_router(service_router)
    app.include_router(loras_router)
    app.include_router(admin_router)
    app.include_router(usage_router)
    if settings.metrics_enabled:
        from fluxserve.api.metrics import install_metrics

        install_metrics(app, state)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
