"""Python SDK for fluxserve and any BFL- or OpenAI-compatible FLUX server.

    from fluxserve.client import FluxClient

    with FluxClient("http://127.0.0.1:8000") as flux:
        result = flux.generate("a red circle", aspect_ratio="16:9", seed=42)
        result.save("circle.png")

``AsyncFluxClient`` has the same methods as coroutines; ``FluxClient`` runs them on its own
event loop. Both poll with capped exponential backoff, honour ``Retry-After`` on 429, download
each image the moment it is ready (before any URL can expire), and raise typed errors that
carry the job id.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urljoin

import httpx
from PIL import Image

from fluxserve.images import stitch_horizontally

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_PRICES: dict[str, float] = {
    "flux-kontext-pro": 0.04,
    "flux-kontext-max": 0.08,
    "flux-pro-1.1": 0.04,
    "flux-pro-1.1-ultra": 0.06,
    "flux-dev": 0.025,
}
ImageInput = str | Path | bytes | Image.Image
"""A file path, raw bytes, a PIL image, or an http(s) / data URL."""
T = TypeVar("T")


# ---------------------------------------------------------------- errors


class FluxError(Exception):
    """Base class; ``job_id`` is set once the server has accepted the job."""

    def __init__(self, message: str, job_id: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.message} (job {self.job_id})" if self.job_id else self.message


class ModeratedError(FluxError):
    """The request (``kind="request"``) or the generated image (``kind="content"``) was
    moderated."""

    def __init__(
        self,
        message: str,
        kind: Literal["request", "content"],
        category: str | None = None,
        job_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, job_id, status_code)
        self.kind = kind
        self.category = category


class ValidationError(FluxError):
    """The server refused the request's values (400/422): fix the request."""


class AuthError(FluxError):
    """Missing or wrong API key (401/403)."""


class GenerationTimeout(FluxError):
    """The job did not finish within ``generation_timeout``; it may still finish: poll later."""


class ServerError(FluxError):
    """The server failed (5xx, or the job ended in ``Error``). Transient ones are retried."""


# ---------------------------------------------------------------- results


@dataclass
class GenerationResult:
    image: bytes
    seed: int | None
    prompt: str
    """The final prompt (after upsampling, if any)."""
    model: str
    job_id: str | None
    output_format: str
    timings: dict[str, float] = field(default_factory=dict)
    """Client-side: submit_s, wait_s, download_s, total_s; plus the server's own when given."""
    url: str | None = None

    def save(self, path: str | Path) -> Path:
        """Write the image; a path without a suffix gets the format's."""
        p = Path(path)
        if not p.suffix:
            p = p.with_suffix("." + ("jpg" if self.output_format == "jpeg" else self.output_format))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.image)
        return p

    def to_pil(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image))


@dataclass
class CostEstimate:
    model: str
    count: int
    unit_price: float
    total: float
    source: Literal["server", "default", "custom"]
    currency: str = "USD"


@dataclass
class BatchProgress:
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped


@dataclass
class BatchItemResult:
    index: int
    key: str
    input: dict[str, Any]
    status: Literal["done", "failed", "skipped"]
    file: str | None = None
    seed: int | None = None
    duration: float | None = None
    error: str | None = None
    job_id: str | None = None


@dataclass
class BatchReport:
    items: list[BatchItemResult]
    manifest: Path

    @property
    def done(self) -> int:
        return sum(i.status == "done" for i in self.items)

    @property
    def failed(self) -> int:
        return sum(i.status == "failed" for i in self.items)

    @property
    def skipped(self) -> int:
        return sum(i.status == "skipped" for i in self.items)


# ---------------------------------------------------------------- helpers


def compose(
    left: Image.Image,
    right: Image.Image,
    gap: int = 0,
    background: tuple[int, int, int] | str = (255, 255, 255),
) -> Image.Image:
    """The two images side by side at the taller one's height, aspect ratios kept."""
    return stitch_horizontally([left, right], max(left.height, right.height), gap, background)


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


def item_key(item: dict[str, Any]) -> str:
    """Identity of a batch item in the manifest: a hash of its parameters."""
    return hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_batch_file(path: str | Path) -> list[dict[str, Any]]:
    """Items from a .txt (one prompt a line, # comments), .csv (header row) or .jsonl file."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{p}:{n}: not valid JSON ({exc})") from exc
                items.append(obj if isinstance(obj, dict) else {"prompt": str(obj)})
        return items
    if p.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        out = []
        for row in rows:
            item: dict[str, Any] = {}
            for k, v in row.items():
                if k is None or v is None or v == "":
                    continue
                k = k.strip()
                if k in ("seed", "width", "height", "steps", "safety_tolerance"):
                    item[k] = int(v)
                elif k == "guidance":
                    item[k] = float(v)
                elif k == "prompt_upsampling":
                    item[k] = v.strip().lower() in ("1", "true", "yes")
                else:
                    item[k] = v
            out.append(item)
        return out
    return [
        {"prompt": line.strip()}
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _retry_after(resp: httpx.Response, default: float) -> float:
    value = resp.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return default


# ---------------------------------------------------------------- async client


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
        self.base_url = (base_url or os.environ.get("FLUXSERVE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("FLUXSERVE_API_KEY") or os.environ.get("BFL_API_KEY")
        if protocol not in ("bfl", "openai"):
            raise ValueError("protocol must be 'bfl' or 'openai'")
        self.protocol = protocol
        self.generation_timeout = generation_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.max_retries = max_retries
        self.custom_prices = dict(prices or {})
        self._server_prices: dict[str, float] | None = None
        headers = {"User-Agent": "fluxserve-client"}
        if self.api_key:
            headers["x-key"] = self.api_key
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFluxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ HTTP with retries

    async def _request(self, method: str, url: str, job_id: str | None = None, **kw: Any) -> httpx.Response:
        """One request; 429 and transient failures (connection errors, 502/503/504) are
        retried with backoff, honouring Retry-After."""
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            try:
                resp = await self._http.request(method, url, **kw)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt == self.max_retries:
                    raise ServerError(f"cannot reach {url}: {exc.__class__.__name__}", job_id) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            if resp.status_code == 429 or resp.status_code in (502, 503, 504):
                if attempt == self.max_retries:
                    raise ServerError(
                        f"{url} answered {resp.status_code} {self.max_retries + 1} times",
                        job_id,
                        resp.status_code,
                    )
                await asyncio.sleep(min(_retry_after(resp, delay), 60.0))
                delay = min(delay * 2, 8.0)
                continue
            return resp
        raise AssertionError("unreachable")

    def _raise_for(self, resp: httpx.Response, job_id: str | None = None) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:300]}
        message, code = self._error_text(body)
        if resp.status_code in (401, 403):
            raise AuthError(message or "authentication failed: check the API key", job_id, resp.status_code)
        if code == "moderation_blocked":
            category = None
            m = re.search(r"category: ([a-z_]+)", message)
            if m:
                category = m.group(1)
            raise ModeratedError(message, "request", category, job_id, resp.status_code)
        if resp.status_code in (400, 404, 409, 413, 422):
            raise ValidationError(message, job_id, resp.status_code)
        raise ServerError(message or f"HTTP {resp.status_code}", job_id, resp.status_code)

    @staticmethod
    def _error_text(body: Any) -> tuple[str, str | None]:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            return str(err.get("message", "")), err.get("code")
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                parts = []
                for d in detail:
                    if isinstance(d, dict):
                        loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                        parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
                return "; ".join(parts), None
            return str(detail), None
        return str(body)[:300], None

    # ------------------------------------------------------------ inputs

    async def _image_bytes(self, image: ImageInput) -> bytes:
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
            return buf.getvalue()
        if isinstance(image, bytes):
            return image
        text = str(image)
        if text.startswith(("http://", "https://")):
            resp = await self._request("GET", text)
            if resp.status_code != 200:
                raise ValidationError(f"could not download {text}: HTTP {resp.status_code}")
            return resp.content
        if text.startswith("data:"):
            return base64.b64decode(text.partition(",")[2])
        path = Path(text)
        if not path.is_file():
            raise ValidationError(f"input image {text!r} is not a file, a URL or a data URL")
        return path.read_bytes()

    async def load_image(self, image: ImageInput) -> Image.Image:
        """An input (path, bytes, PIL image or URL) as a PIL image."""
        if isinstance(image, Image.Image):
            return image
        return Image.open(io.BytesIO(await self._image_bytes(image)))

    # ------------------------------------------------------------ generate

    async def generate(
        self,
        prompt: str,
        model: str = "flux-kontext-pro",
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
        """Generate one image (or edit, with ``input_images``), wait for it, download it."""
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
        images = [await self._image_bytes(i) for i in (input_images or [])]
        if len(images) > 4:
            raise ValidationError("at most 4 input images are supported")
        t0 = time.monotonic()
        if self.protocol == "openai":
            return await self._generate_openai(prompt, model, params, images, t0)
        return await self._generate_bfl(prompt, model, params, images, input_images or [], t0)

    async def edit(
        self,
        images: Sequence[ImageInput] | ImageInput,
        prompt: str,
        model: str = "flux-kontext-pro",
        **kwargs: Any,
    ) -> GenerationResult:
        """Kontext editing with one to four images."""
        seq: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]  # type: ignore[list-item]
        if not 1 <= len(seq) <= 4:
            raise ValidationError("edit takes one to four images")
        return await self.generate(prompt, model, input_images=seq, **kwargs)

    async def pair_edit(
        self,
        left: ImageInput,
        right: ImageInput,
        prompt: str,
        *,
        gap: int = 0,
        background: tuple[int, int, int] | str = (255, 255, 255),
        model: str = "flux-kontext-pro",
        **kwargs: Any,
    ) -> GenerationResult:
        """Compose two images side by side, then edit the result (for single-image Kontext)."""
        combined = compose(await self.load_image(left), await self.load_image(right), gap, background)
        return await self.edit([combined], prompt, model, **kwargs)

    async def _generate_bfl(
        self,
        prompt: str,
        model: str,
        params: dict[str, Any],
        images: list[bytes],
        originals: Sequence[ImageInput],
        t0: float,
    ) -> GenerationResult:
        body: dict[str, Any] = {"prompt": prompt, **params}
        for i, (data, original) in enumerate(zip(images, originals, strict=True)):
            name = "input_image" if i == 0 else f"input_image_{i + 1}"
            is_url = isinstance(original, str) and original.startswith(("http://", "https://"))
            body[name] = original if is_url else base64.b64encode(data).decode()
        headers = {"Idempotency-Key": str(uuid.uuid4())}  # a retried submit is the same job
        resp = await self._request("POST", f"{self.base_url}/v1/{model}", json=body, headers=headers)
        self._raise_for(resp)
        sub = resp.json()
        job_id = str(sub["id"])
        polling_url = urljoin(self.base_url + "/", sub.get("polling_url") or f"v1/get_result?id={job_id}")
        t_submit = time.monotonic()
        deadline = t_submit + self.generation_timeout
        interval = self.poll_interval
        while True:
            r = await self._request("GET", polling_url, job_id)
            self._raise_for(r, job_id)
            data = r.json()
            status = data.get("status")
            if status == "Ready":
                break
            if status == "Request Moderated" or status == "Content Moderated":
                kind: Literal["request", "content"] = "request" if status.startswith("Request") else "content"
                category = ((data.get("details") or {}).get("moderation") or {}).get("category")
                raise ModeratedError(
                    f"{status} (category: {category or 'unspecified'})", kind, category, job_id
                )
            if status == "Error":
                details = data.get("details") or {}
                raise ServerError(f"generation failed: {details.get('error') or details}", job_id)
            if status == "Task not found":
                raise ServerError("the server does not know this job (Task not found)", job_id)
            if time.monotonic() > deadline:
                raise GenerationTimeout(f"not ready after {self.generation_timeout:.0f}s", job_id)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)
        t_ready = time.monotonic()
        result = data["result"]
        sample = result["sample"]
        img = await self._request("GET", sample, job_id)
        if img.status_code != 200:
            raise ServerError(f"downloading the result gave HTTP {img.status_code}", job_id)
        t_done = time.monotonic()
        fmt = _format_of(img.content)
        timings = {
            "submit_s": t_submit - t0,
            "wait_s": t_ready - t_submit,
            "download_s": t_done - t_ready,
            "total_s": t_done - t0,
        }
        for k, v in (result.get("timings") or {}).items():
            if isinstance(v, int | float):
                timings[f"server_{k}"] = float(v)
        return GenerationResult(
            image=img.content,
            seed=result.get("seed"),
            prompt=result.get("prompt") or prompt,
            model=model,
            job_id=job_id,
            output_format=fmt,
            timings=timings,
            url=sample,
        )

    async def _generate_openai(
        self, prompt: str, model: str, params: dict[str, Any], images: list[bytes], t0: float
    ) -> GenerationResult:
        # OpenAI responses carry no seed: draw one here so that the result can report it.
        params.setdefault("seed", int.from_bytes(os.urandom(4), "big"))
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        if images:
            files = [
                ("image[]", (f"image{i}.png", data, "application/octet-stream"))
                for i, data in enumerate(images)
            ]
            form = {"prompt": prompt, "model": model, "response_format": "b64_json"}
            form.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()})
            resp = await self._request(
                "POST", f"{self.base_url}/v1/images/edits", data=form, files=files, headers=headers
            )
        else:
            body = {"prompt": prompt, "model": model, "response_format": "b64_json", **params}
            resp = await self._request(
                "POST", f"{self.base_url}/v1/images/generations", json=body, headers=headers
            )
        self._raise_for(resp)
        data = resp.json()
        item = data["data"][0]
        image = base64.b64decode(item["b64_json"])
        t_done = time.monotonic()
        return GenerationResult(
            image=image,
            seed=params.get("seed"),
            prompt=item.get("revised_prompt") or prompt,
            model=model,
            job_id=None,
            output_format=data.get("output_format") or _format_of(image),
            timings={"total_s": t_done - t0, "wait_s": t_done - t0},
        )

    # ------------------------------------------------------------ cost

    async def prices(self) -> tuple[dict[str, float], Literal["server", "default"]]:
        """The server's published prices (``GET /v1/prices``) if it has them, else defaults."""
        if self._server_prices is None:
            try:
                r = await self._http.get(f"{self.base_url}/v1/prices", timeout=3.0)
                data = r.json() if r.status_code == 200 else {}
                self._server_prices = {str(k): float(v) for k, v in (data.get("prices") or {}).items()}
            except (httpx.HTTPError, ValueError):
                self._server_prices = {}
        if self._server_prices:
            return self._server_prices, "server"
        return dict(DEFAULT_PRICES), "default"

    async def estimate_cost(self, model: str, n: int = 1) -> CostEstimate:
        """What ``n`` images of ``model`` cost: custom prices first, then the server's, then
        the defaults."""
        if model in self.custom_prices:
            unit, source = self.custom_prices[model], "custom"
        else:
            table, src = await self.prices()
            if model not in table:
                known = ", ".join(sorted(table))
                raise ValidationError(f"no price for model {model!r}; known: {known}")
            unit, source = table[model], src
        return CostEstimate(model, n, unit, round(unit * n, 6), source)  # type: ignore[arg-type]

    # ------------------------------------------------------------ batch

    async def batch(
        self,
        items: Iterable[str | dict[str, Any]],
        concurrency: int = 4,
        out_dir: str | Path = "fluxserve-batch",
        on_progress: Callable[[BatchProgress], None] | None = None,
        retries: int = 2,
    ) -> BatchReport:
        """Run many generations with bounded concurrency. Each image is saved the moment it is
        ready and recorded in ``out_dir/manifest.jsonl``; a failed item never costs another
        its result; a re-run skips items the manifest records as done."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest = out / "manifest.jsonl"
        finished: dict[str, dict[str, Any]] = {}
        if manifest.exists():
            for line in manifest.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if rec.get("status") == "done" and rec.get("file") and (out / rec["file"]).exists():
                    finished[rec["key"]] = rec
        normalized = [{"prompt": i} if isinstance(i, str) else dict(i) for i in items]
        progress = BatchProgress(total=len(normalized))
        results: list[BatchItemResult] = []
        sem = asyncio.Semaphore(max(1, concurrency))
        lock = asyncio.Lock()

        def report() -> None:
            if on_progress is not None:
                on_progress(progress)

        async def write(rec: BatchItemResult) -> None:
            async with lock:
                with open(manifest, "a", encoding="utf-8") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "index": rec.index,
                                "key": rec.key,
                                "input": rec.input,
                                "status": rec.status,
                                "file": rec.file,
                                "seed": rec.seed,
                                "duration": rec.duration,
                                "error": rec.error,
                                "job_id": rec.job_id,
                            }
                        )
                        + "\n"
                    )
                    fh.flush()
                    os.fsync(fh.fileno())

        async def run_one(index: int, item: dict[str, Any]) -> None:
            key = item_key(item)
            if key in finished:
                rec = finished[key]
                results.append(BatchItemResult(index, key, item, "skipped", rec["file"], rec.get("seed")))
                progress.skipped += 1
                report()
                return
            async with sem:
                progress.running += 1
                report()
                t0 = time.monotonic()
                rec_out: BatchItemResult | None = None
                params = {k: v for k, v in item.items() if k not in ("prompt", "model", "name", "images")}
                last_error: FluxError | None = None
                for attempt in range(retries + 1):
                    try:
                        res = await self.generate(
                            str(item.get("prompt", "")),
                            item.get("model", "flux-kontext-pro"),
                            input_images=item.get("images"),
                            **params,
                        )
                    except (ServerError, GenerationTimeout) as exc:  # transient: try again
                        last_error = exc
                        if attempt < retries:
                            await asyncio.sleep(0.5 * 2**attempt)
                        continue
                    except FluxError as exc:  # validation, moderation, auth: retrying won't help
                        last_error = exc
                        break
                    except TypeError as exc:  # an unknown parameter in the item
                        last_error = ValidationError(f"bad item parameters: {exc}")
                        break
                    name = item.get("name") or f"{index:04d}-{_slug(str(item.get('prompt', '')))}"
                    path = res.save(out / name)
                    rec_out = BatchItemResult(
                        index,
                        key,
                        item,
                        "done",
                        path.name,
                        res.seed,
                        round(time.monotonic() - t0, 3),
                        job_id=res.job_id,
                    )
                    break
                if rec_out is None:
                    assert last_error is not None
                    rec_out = BatchItemResult(
                        index,
                        key,
                        item,
                        "failed",
                        duration=round(time.monotonic() - t0, 3),
                        error=f"{last_error.__class__.__name__}: {last_error}",
                        job_id=last_error.job_id,
                    )
                await write(rec_out)
                results.append(rec_out)
                progress.running -= 1
                if rec_out.status == "done":
                    progress.done += 1
                else:
                    progress.failed += 1
                report()

        report()
        await asyncio.gather(*(run_one(i, item) for i, item in enumerate(normalized)))
        results.sort(key=lambda r: r.index)
        return BatchReport(results, manifest)


def _format_of(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


# ---------------------------------------------------------------- sync client


class FluxClient:
    """The synchronous client: the same methods as :class:`AsyncFluxClient`, blocking."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncFluxClient(base_url, api_key, **kwargs)

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def protocol(self) -> str:
        return self._async.protocol

    def _run(self, coro: Awaitable[T]) -> T:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._async.aclose())
            self._loop.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, prompt: str, model: str = "flux-kontext-pro", **kwargs: Any) -> GenerationResult:
        return self._run(self._async.generate(prompt, model, **kwargs))

    def edit(
        self,
        images: Sequence[ImageInput] | ImageInput,
        prompt: str,
        model: str = "flux-kontext-pro",
        **kwargs: Any,
    ) -> GenerationResult:
        return self._run(self._async.edit(images, prompt, model, **kwargs))

    def pair_edit(self, left: ImageInput, right: ImageInput, prompt: str, **kwargs: Any) -> GenerationResult:
        return self._run(self._async.pair_edit(left, right, prompt, **kwargs))

    def compose(
        self,
        left: ImageInput,
        right: ImageInput,
        gap: int = 0,
        background: tuple[int, int, int] | str = (255, 255, 255),
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
        return self._run(self._async.batch(items, concurrency, out_dir, on_progress, retries))

    def estimate_cost(self, model: str, n: int = 1) -> CostEstimate:
        return self._run(self._async.estimate_cost(model, n))

    def prices(self) -> tuple[dict[str, float], str]:
        return self._run(self._async.prices())
