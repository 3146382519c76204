"""The app factory: settings in, a FastAPI app out (store, storage, engine, worker included)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxserve import __version__
from fluxserve.api.bfl import make_router, render_result
from fluxserve.api.errors import install_error_handlers
from fluxserve.api.jobs import router as jobs_router
from fluxserve.api.openai import router as openai_router
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog
from fluxserve.db import Database
from fluxserve.engines import Engine
from fluxserve.images import ImageLimits
from fluxserve.jobs import JobService, SQLiteJobStore, Worker
from fluxserve.jobs.idempotency import IdempotencyStore
from fluxserve.jobs.webhooks import WebhookDispatcher, WebhookStore
from fluxserve.keys import ApiKeyStore
from fluxserve.safety import Moderator, OpenNSFWClassifier
from fluxserve.settings import Settings
from fluxserve.storage import CONTENT_TYPES, LocalStorage, SignedUrls, load_or_create_secret
from fluxserve.upsampling import BuiltinUpsampler, ChatUpsampler, PromptUpsampler

log = logging.getLogger("fluxserve")


def checkpoint_resolver(settings: Settings):  # type: ignore[no-untyped-def]
    """Map a catalog checkpoint name to a directory (building the built-in one if needed)."""

    def resolve(name: str) -> Path:
        if name == BUILTIN_CHECKPOINT:
            from fluxserve.embedded import embedded_checkpoint

            shipped = embedded_checkpoint()
            if shipped is not None:
                return shipped
            # A build without the trained weights still serves: a random tiny checkpoint.
            from fluxserve.engines.tiny import ensure_tiny_checkpoint

            return ensure_tiny_checkpoint(settings.data_dir / "models")
        path = Path(name).expanduser()
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"checkpoint {name!r} is not a diffusers pipeline directory (no model_index.json); "
                "point the model's 'checkpoint' setting at a local FLUX or FLUX Kontext checkpoint"
            )
        return path

    return resolve


class BodyLimit:
    """Refuse request bodies over a size limit (413), whether declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = JSONResponse(
                    status_code=413,
                    content={"detail": f"request body larger than {self.max_bytes} bytes"},
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. ``engine`` defaults to the diffusers FLUX engine."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_path)
    storage = LocalStorage(settings.data_dir / "files")
    catalog = ModelCatalog.from_settings(settings)
    moderator = Moderator(
        enabled=settings.moderation_enabled,
        thresholds=settings.moderation_thresholds,
        image_thresholds=settings.moderation_image_thresholds,
        classifier=OpenNSFWClassifier() if settings.moderation_enabled else None,
    )
    upsampler: PromptUpsampler = BuiltinUpsampler()
    if settings.upsampler == "chat":
        if not settings.upsampler_url:
            raise ValueError("upsampler = 'chat' needs upsampler_url (an OpenAI-compatible base URL)")
        upsampler = ChatUpsampler(
            settings.upsampler_url,
            settings.upsampler_model,
            settings.upsampler_api_key,
            settings.upsampler_timeout_s,
        )
    scene_models = frozenset(e.id for e in catalog if e.checkpoint == BUILTIN_CHECKPOINT)
    service = JobService(SQLiteJobStore(db), storage, moderator, upsampler, scene_models)
    if engine is None:
        from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

        engine = DiffusersFluxEngine(checkpoint_resolver(settings), settings.device, settings.dtype)
    state = AppState(
        settings=settings,
        catalog=catalog,
        service=service,
        storage=storage,
        signer=SignedUrls(load_or_create_secret(settings.data_dir, settings.secret_key), settings.url_ttl_s),
        keys=ApiKeyStore(db),
        idempotency=IdempotencyStore(db),
        limits=ImageLimits(
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
            fetch_timeout_s=settings.fetch_timeout_s,
            allow_private_urls=settings.allow_private_urls,
        ),
    )
    worker = Worker(service, engine, catalog)
    service.webhooks = WebhookStore(db)

    def render_for_webhook(job_id: str, base_url: str) -> dict[str, Any] | None:
        job = service.get(job_id)
        if job is None:
            return None
        return render_result(state, job, settings.public_url or base_url).model_dump()

    dispatcher = WebhookDispatcher(
        service.webhooks,
        render_for_webhook,
        settings.allow_private_urls,
        base_delay_s=settings.webhook_retry_base_s,
        max_delay_s=settings.webhook_max_delay_s,
        max_attempts=settings.webhook_max_attempts,
        timeout_s=settings.webhook_timeout_s,
    )

    async def load_models() -> None:
        try:
            for checkpoint in sorted(catalog.checkpoints()):
                await asyncio.to_thread(engine.load, checkpoint)
        except Exception as exc:
            state.load_error = f"{exc.__class__.__name__}: {exc}"
            log.error("model loading failed: %s", state.load_error)
            return
        state.ready = True
        recovered = service.store.requeue_running()
        if recovered:
            log.warning("re-queued %d job(s) left running by a previous process", recovered)
        await worker.run()

    async def sweep() -> None:
        while True:
            cutoff = time.time() - settings.retention_s
            for job_id in service.store.finished_before(cutoff):
                await asyncio.to_thread(storage.delete_prefix, f"results/{job_id}")
                await asyncio.to_thread(storage.delete_prefix, f"inputs/{job_id}")
                service.store.delete(job_id)
            await asyncio.sleep(settings.sweep_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        service.events.bind(loop)
        service.on_webhook = dispatcher.wakeup.set
        tasks = [
            asyncio.create_task(load_models()),
            asyncio.create_task(sweep()),
            asyncio.create_task(dispatcher.run()),
        ]
        try:
            yield
        finally:
            worker.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            db.close()

    app = FastAPI(
        title="fluxserve",
        version=__version__,
        description="Self-hosted FLUX behind the BFL async API and the OpenAI Images API.",
        lifespan=lifespan,
    )
    app.state.fluxserve = state
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(make_router(list(catalog)))
    app.include_router(jobs_router)
    app.include_router(_misc_router())
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app


def _misc_router() -> APIRouter:
    router = APIRouter(tags=["Service"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Any:
        """200 once the models are loaded; 503 while they load (or if loading failed)."""
        state = get_state(request)
        if state.ready:
            return {"status": "ready"}
        body = {"status": "error", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(status_code=503, content=body)

    @router.get("/v1/files/{key:path}", response_class=FileResponse)
    async def get_file(key: str, request: Request, exp: str | None = None, sig: str | None = None) -> Any:
        """A result file, by signed URL (no API key needed; the signature is the credential)."""
        state = get_state(request)
        verdict = state.signer.verify(key, exp, sig)
        if verdict == "expired":
            raise HTTPException(403, "this URL has expired: poll get_result again for a fresh one")
        if verdict != "ok" or not key.startswith("results/"):
            raise HTTPException(403, "invalid signature")
        try:
            path = state.storage.path(key)
        except ValueError as exc:
            raise HTTPException(403, "invalid path") from exc
        if not path.is_file():
            raise HTTPException(404, "this result has been deleted (past its retention time)")
        ext = path.suffix.lstrip(".")
        return FileResponse(path, media_type=CONTENT_TYPES.get(ext, "application/octet-stream"))

    return router
