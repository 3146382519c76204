"""The synchronous client: :class:`AsyncFluxClient`'s methods, run on a private event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from fluxserve.client.async_client import DEFAULT_MODEL, AsyncFluxClient
from fluxserve.client.composition import WHITE, Background, compose
from fluxserve.client.inputs import ImageInput
from fluxserve.client.models import BatchProgress, BatchReport, CostEstimate, Credits, GenerationResult

T = TypeVar("T")


class FluxClient:
    """The synchronous client: the same methods as :class:`AsyncFluxClient`, blocking."""

    verify_webhook = staticmethod(AsyncFluxClient.verify_webhook)

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **kwargs: Any) -> None:
        """Take the same arguments as :class:`AsyncFluxClient`."""
        self._loop = asyncio.new_event_loop()
        self._async = AsyncFluxClient(base_url, api_key, **kwargs)

    @property
    def base_url(self) -> str:
        """The server's URL, without a trailing slash."""
        return self._async.base_url

    @property
    def protocol(self) -> str:
        """The protocol spoken to the server: ``bfl`` or ``openai``."""
        return self._async.protocol

    def _run(self, coro: Awaitable[T]) -> T:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the connections and the event loop; closing twice is harmless."""
        if not self._loop.is_closed():
            self._run(self._async.aclose())
            self._loop.close()

    def __enter__(self) -> FluxClient:
        """Use the client as a context manager; it closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    def generate(self, prompt: str, model: str = DEFAULT_MODEL, **kwargs: Any) -> GenerationResult:
        """Generate one image; see :meth:`AsyncFluxClient.generate`."""
        return self._run(self._async.generate(prompt, model, **kwargs))

    def edit(
        self,
        images: Sequence[ImageInput] | ImageInput,
        prompt: str,
        model: str = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> GenerationResult:
        """Edit with reference images (up to 8 for FLUX.2); see :meth:`AsyncFluxClient.edit`."""
        return self._run(self._async.edit(images, prompt, model, **kwargs))

    def pair_edit(self, left: ImageInput, right: ImageInput, prompt: str, **kwargs: Any) -> GenerationResult:
        """Compose two images, then edit the result; see :meth:`AsyncFluxClient.pair_edit`."""
        return self._run(self._async.pair_edit(left, right, prompt, **kwargs))

    def compose(
        self,
        left: ImageInput,
        right: ImageInput,
        gap: int = 0,
        background: Background = WHITE,
    ) -> Image.Image:
        """Two images (paths, bytes, PIL images or URLs) side by side, heights matched."""
        return compose(
            self._run(self._async.load_image(left)), self._run(self._async.load_image(right)), gap, background
        )

    def batch(
        self,
        items: Iterable[str | dict[str, Any]],
        concurrency: int = 4,
        out_dir: str | Path = "fluxserve-batch",
        on_progress: Callable[[BatchProgress], None] | None = None,
        retries: int = 2,
    ) -> BatchReport:
        """Run many generations, resumably; see :meth:`AsyncFluxClient.batch`."""
        return self._run(self._async.batch(items, concurrency, out_dir, on_progress, retries))

    def estimate_cost(self, model: str, n: int = 1) -> CostEstimate:
        """What ``n`` images of ``model`` cost; see :meth:`AsyncFluxClient.estimate_cost`."""
        return self._run(self._async.estimate_cost(model, n))

    def credits(self) -> Credits:
        """The caller's credit balance; see :meth:`AsyncFluxClient.credits`."""
        return self._run(self._async.credits())

    def prices(self) -> tuple[dict[str, float], str]:
        """The price table in use and where it came from (``server`` or ``default``)."""
        return self._run(self._async.prices())
