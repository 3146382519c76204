"""The engine for forwarded models, and the router that puts it beside the local engine."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from fluxserve.catalog import ModelCatalog, parse_upstream_checkpoint
from fluxserve.engines import (
    Engine,
    EngineRequest,
    JobCancelled,
    PreviewCallback,
    StepCallback,
    generate_batch,
    prefetch,
)
from fluxserve.engines.sources import CheckpointError
from fluxserve.settings import UpstreamSettings
from fluxserve.upstreams import bfl, openai
from fluxserve.upstreams.call import UpstreamCall, UpstreamError, UpstreamNotAccepted

if TYPE_CHECKING:
    from fluxserve.settings import Settings

T = TypeVar("T")
CANCEL_CHECK_S = 0.25


class UpstreamEngine:
    """Runs ``upstream:<name>:<model>`` checkpoints at their upstream: nothing to load, no GPU.
    A run is submit, poll, download (see :mod:`fluxserve.upstreams.bfl` and ``.openai``), all
    within the upstream's ``max_wait_s``; it records the upstream's id and cost (its reported
    cost, else ``prices[checkpoint]`` per image) in ``request.extras``."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamSettings],
        prices: Mapping[str, float] | None = None,
        *,
        allow_private_urls: bool = False,
        max_download_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.prices = dict(prices or {})
        self.allow_private_urls = allow_private_urls
        self.max_download_bytes = max_download_bytes

    def _target(self, checkpoint: str) -> tuple[str, str, UpstreamSettings]:
        parsed = parse_upstream_checkpoint(checkpoint)
        if parsed is None or parsed[0] not in self.upstreams:
            raise CheckpointError(f"{checkpoint!r} names no configured upstream")
        return parsed[0], parsed[1], self.upstreams[parsed[0]]

    def load(self, checkpoint: str) -> None:
        """Check the upstream is configured (a BFL upstream needs its API key); loads nothing."""
        name, _, upstream = self._target(checkpoint)
        if upstream.kind == "bfl" and not upstream.api_key:
            where = f"set {upstream.api_key_env}" if upstream.api_key_env else "set api_key_env"
            raise CheckpointError(f"upstream {name!r} has no API key: {where}")

    def generate(
        self,
        request: EngineRequest,
        on_step: StepCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
        want_preview: Callable[[int], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Run ``request`` at its upstream; blocking (the worker calls it in a thread).
        Raises :class:`UpstreamError`, :class:`~fluxserve.engines.EngineModerated` or
        :class:`~fluxserve.engines.JobCancelled`."""
        name, model, upstream = self._target(request.checkpoint)
        call = UpstreamCall(name, upstream, self.allow_private_urls, self.max_download_bytes)

        def progress(fraction: float) -> None:
            if on_step is not None:
                on_step(max(0, min(99, round(fraction * 100))), 100)

        async def go() -> tuple[list[bytes], dict[str, Any]]:
            try:
                if upstream.kind == "bfl":
                    return await bfl.run(call, model, request, progress)
                return await openai.run(call, model, request)
            finally:
                await call.aclose()

        try:
            blobs, extras = asyncio.run(_until_cancelled(go(), cancelled))
        except UpstreamError as exc:
            if call.accepted or isinstance(exc, UpstreamNotAccepted):
                raise
            raise UpstreamNotAccepted(str(exc)) from exc
        images = []
        for data in blobs:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    images.append(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
            except Exception as exc:
                raise UpstreamError(f"upstream {name!r} sent a result that is no image ({exc})") from exc
        if on_step is not None:
            on_step(100, 100)
        extras = {"upstream": name, "upstream_model": model, **extras}
        if "upstream_cost_usd" not in extras and request.checkpoint in self.prices:
            extras["upstream_cost_usd"] = round(self.prices[request.checkpoint] * len(images), 6)
        request.extras.update(extras)
        return images


async def _until_cancelled(work: Coroutine[Any, Any, T], cancelled: Callable[[], bool] | None) -> T:
    """Await ``work``, checking ``cancelled()`` every quarter second: JobCancelled when it
    turns true (the upstream call is abandoned)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=CANCEL_CHECK_S)
        if done:
            return task.result()
        if cancelled is not None and cancelled():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise JobCancelled()


class RoutingEngine:
    """An engine that runs ``upstream:`` checkpoints on an :class:`UpstreamEngine` and every
    other checkpoint on the local engine: so every worker, GPU or not, takes forwarded models."""

    def __init__(self, local: Engine, upstream: UpstreamEngine) -> None:
        self.local = local
        self.upstream = upstream

    def _engine(self, checkpoint: str) -> Engine:
        return self.upstream if parse_upstream_checkpoint(checkpoint) else self.local

    def load(self, checkpoint: str) -> None:
        """Load ``checkpoint`` on the engine that runs it."""
        self._engine(checkpoint).load(checkpoint)

    def generate(self, request: EngineRequest, *args: Any, **kwargs: Any) -> list[Image.Image]:
        """Run ``request`` on the engine for its checkpoint."""
        return self._engine(request.checkpoint).generate(request, *args, **kwargs)

    def generate_batch(
        self,
        requests: list[EngineRequest],
        on_step: StepCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """Run a batch on the engine for its checkpoint (an upstream runs them one by one)."""
        return generate_batch(self._engine(requests[0].checkpoint), requests, on_step, cancelled)

    def prefetch(self, request: EngineRequest) -> bool:
        """Prepare ``request`` on the engine for its checkpoint."""
        return prefetch(self._engine(request.checkpoint), request)


def _upstream_engine(settings: Settings, prices: dict[str, float]) -> UpstreamEngine:
    return UpstreamEngine(
        settings.upstreams,
        prices,
        allow_private_urls=settings.allow_private_urls,
        max_download_bytes=settings.max_input_bytes * 4,
    )


def with_upstreams(engine: Engine, settings: Settings, catalog: ModelCatalog) -> Engine:
    """``engine``, routed beside an :class:`UpstreamEngine` when the catalog forwards models."""
    prices = {
        e.checkpoint: e.upstream_price if e.upstream_price is not None else e.price
        for e in catalog
        if e.upstream
    }
    if not prices:
        return engine
    return RoutingEngine(engine, _upstream_engine(settings, prices))


def overflow_engine(settings: Settings, catalog: ModelCatalog) -> UpstreamEngine | None:
    """The engine of the upstream lane (the jobs that overflow sends to an upstream), or None
    when no model has ``route = "overflow"``."""
    prices = {
        e.overflow.checkpoint: e.upstream_price if e.upstream_price is not None else e.price
        for e in catalog
        if e.overflow is not None
    }
    return _upstream_engine(settings, prices) if prices else None
