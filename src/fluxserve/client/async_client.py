"""The asynchronous client: generate, edit, compose, batch and price images on one server."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from PIL import Image

from fluxserve.client import batch as _batch
from fluxserve.client.bfl import BflApi, Polling
from fluxserve.client.composition import WHITE, Background, compose
from fluxserve.client.errors import ValidationError, raise_for_response
from fluxserve.client.inputs import ImageInput, image_bytes, load_image
from fluxserve.client.model_ids import max_input_images
from fluxserve.client.models import BatchReport, CostEstimate, Credits, GenerationResult
from fluxserve.client.openai import OpenAIImagesApi
from fluxserve.client.pricing import PriceList
from fluxserve.client.protocol import GenerationRequest, ImagesApi
from fluxserve.client.session import Session
from fluxserve.client.webhooks import DEFAULT_TOLERANCE_S
from fluxserve.client.webhooks import verify_webhook as _verify_webhook

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "flux-kontext-pro"


class AsyncFluxClient:
    """Async client for the BFL (default) or OpenAI protocol."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        protocol: Literal["bfl", "openai"] = "bfl",
        timeout: float = 60.0,
        generation_timeout: float = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 5.0,
        max_retries: int = 4,
        prices: dict[str, float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Connect to ``base_url`` (else ``FLUXSERVE_BASE_URL``, else the local default) with
        ``api_key`` (else ``FLUXSERVE_API_KEY``, else ``BFL_API_KEY``)."""
        base_url = (base_url or os.environ.get("FLUXSERVE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key or os.environ.get("FLUXSERVE_API_KEY") or os.environ.get("BFL_API_KEY")
        if protocol not in ("bfl", "openai"):
            raise ValueError("protocol must be 'bfl' or 'openai'")
        self._protocol = protocol
        self._polling = Polling(poll_interval, max_poll_interval, generation_timeout)
        self._session = Session(base_url, self._api_key, timeout, max_retries, transport)
        self._api: ImagesApi = (
            BflApi(self._session, self._polling) if protocol == "bfl" else OpenAIImagesApi(self._session)
        )
        self._prices = PriceList(self._session, prices)

    # The settings, readable as before; they are fixed once the client is built.

    @property
    def base_url(self) -> str:
        """The server's URL, without a trailing slash."""
        return self._session.base_url

    @property
    def api_key(self) -> str | None:
        """The API key sent with every request, if any."""
        return self._api_key

    @property
    def protocol(self) -> Literal["bfl", "openai"]:
        """The protocol spoken to the server."""
        return self._protocol

    @property
    def generation_timeout(self) -> float:
        """Seconds a BFL job may take, from its submission, before GenerationTimeout."""
        return self._polling.timeout

    @property
    def poll_interval(self) -> float:
        """The first BFL polling interval in seconds."""
        return self._polling.interval

    @property
    def max_poll_interval(self) -> float:
        """The longest BFL polling interval in seconds."""
        return self._polling.max_interval

    @property
    def max_retries(self) -> int:
        """How often a 429 or a transient failure is retried."""
        return self._session.max_retries

    @property
    def custom_prices(self) -> dict[str, float]:
        """The caller's prices (USD per image), which win over the server's and the defaults."""
        return self._prices.custom

    async def aclose(self) -> None:
        """Close the connections."""
        await self._session.aclose()

    async def __aenter__(self) -> AsyncFluxClient:
        """Use the client as an async context manager; it closes on exit."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the client."""
        await self.aclose()

    async def load_image(self, image: ImageInput) -> Image.Image:
        """An input (path, bytes, PIL image or URL) as a PIL image."""
        return await load_image(image, self._session)

    async def generate(
        self,
        prompt: str,
        model: str = DEFAULT_MODEL,
        *,
        aspect_ratio: str | None = None,
        width: int | None = None,
        height: int | None = None,
        seed: int | None = None,
        safety_tolerance: int | None = None,
        output_format: str | None = None,
        prompt_upsampling: bool | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        input_images: Sequence[ImageInput] | None = None,
    ) -> GenerationResult:
        """Generate one image (or edit, with ``input_images``: up to 8 for FLUX.2 pro, max and
        flex, 4 for klein and Kontext), wait for it, download it."""
        params: dict[str, Any] = {
            "aspect_ratio": aspect_ratio,
            "width": width,
            "height": height,
            "seed": seed,
            "safety_tolerance": safety_tolerance,
            "output_format": output_format,
            "prompt_upsampling": prompt_upsampling,
            "steps": steps,
            "guidance": guidance,
        }
        params = {k: v for k, v in params.items() if v is not None}
        originals = input_images or []
        limit = max_input_images(model)
        if len(originals) > limit:
            raise ValidationError(f"{model} takes at most {limit} input images, got {len(originals)}")
        images = [await image_bytes(i, self._session) for i in originals]
        request = GenerationRequest(prompt, model, params, images, originals, started=time.monotonic())
        return await self._api.generate(request)

    async def edit(
        self,
        images: Sequence[ImageInput] | ImageInput,
        prompt: str,
        model: str = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> GenerationResult:
        """Edit with reference images: one to four for Kontext and FLUX.2 klein, up to eight
        for FLUX.2 pro, max and flex."""
        seq: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]  # type: ignore[list-item]
        limit = max_input_images(model)
        if not 1 <= len(seq) <= limit:
            raise ValidationError(f"{model} edits with one to {limit} images, got {len(seq)}")
        return await self.generate(prompt, model, input_images=seq, **kwargs)

    async def pair_edit(
        self,
        left: ImageInput,
        right: ImageInput,
        prompt: str,
        *,
        gap: int = 0,
        background: Background = WHITE,
        model: str = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> GenerationResult:
        """Compose two images side by side, then edit the result (for single-image Kontext)."""
        combined = compose(await self.load_image(left), await self.load_image(right), gap, background)
        return await self.edit([combined], prompt, model, **kwargs)

    async def credits(self) -> Credits:
        """The caller's credit balance (``GET /v1/credits``, BFL's shape)."""
        resp = await self._session.request("GET", f"{self.base_url}/v1/credits")
        raise_for_response(resp)
        data = resp.json()
        return Credits(float(data["credits"]), bool(data.get("unlimited", False)))

    @staticmethod
    def verify_webhook(
        secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S
    ) -> bool:
        """Whether a webhook delivery (request headers, raw body) carries ``secret``; see
        :func:`fluxserve.client.webhooks.verify_webhook`."""
        return _verify_webhook(secret, headers, body, tolerance_s)

    async def prices(self) -> tuple[dict[str, float], Literal["server", "default"]]:
        """The server's published prices (``GET /v1/prices``) if it has them, else defaults."""
        return await self._prices.prices()

    async def estimate_cost(self, model: str, n: int = 1) -> CostEstimate:
        """What ``n`` images of ``model`` cost: custom prices first, then the server's, then
        the defaults."""
        return await self._prices.estimate(model, n)

    async def batch(
        self,
        items: Iterable[str | dict[str, Any]],
        concurrency: int = 4,
        out_dir: str | Path = "fluxserve-batch",
        on_progress: _batch.ProgressCallback | None = None,
        retries: int = 2,
    ) -> BatchReport:
        """Run many generations with bounded concurrency. Each image is saved the moment it is
        ready and recorded in ``out_dir/manifest.jsonl``; a failed item never costs another
        its result; a re-run skips items the manifest records as done."""
        return await _batch.run_batch(self.generate, items, concurrency, out_dir, on_progress, retries)
