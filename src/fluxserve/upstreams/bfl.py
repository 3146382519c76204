"""BFL's async API as an upstream: ``POST /v1/<model>`` with ``x-key``, poll ``polling_url``
(``GET /v1/get_result``) with back-off, download ``result.sample`` at once."""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Callable
from typing import Any

from PIL import Image

from fluxserve.engines import EngineModerated, EngineRequest
from fluxserve.upstreams.call import UpstreamCall, UpstreamError

ProgressCallback = Callable[[float], None]


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def submit_body(request: EngineRequest, index: int = 0) -> dict[str, Any]:
    """The BFL request body for ``request``: prompt, seed, size (as width/height and as an
    aspect ratio, for the models that take one), PNG output, input images as base64; image
    ``index`` of several gets ``seed + index``."""
    g = math.gcd(request.width, request.height)
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "seed": request.seed + index,
        "width": request.width,
        "height": request.height,
        "aspect_ratio": f"{request.width // g}:{request.height // g}",
        "output_format": "png",
    }
    for i, image in enumerate(request.images):
        body["input_image" if i == 0 else f"input_image_{i + 1}"] = _png_b64(image)
    if request.mask is not None:
        body["mask"] = _png_b64(request.mask)
    return body


def _detail(response_json: Any) -> str:
    if isinstance(response_json, dict) and "detail" in response_json:
        return str(response_json["detail"])[:300]
    return str(response_json)[:300]


async def run_one(
    call: UpstreamCall, model: str, request: EngineRequest, on_progress: ProgressCallback, index: int = 0
) -> tuple[bytes, str, float | None]:
    """Make one image at BFL: (its bytes, the upstream task id, its cost in credits or None)."""
    key = call.settings.api_key or ""
    headers = {"x-key": key, "accept": "application/json"}
    base = call.settings.base_url.rstrip("/")
    resp = await call.request("POST", f"{base}/v1/{model}", json=submit_body(request, index), headers=headers)
    if resp.status_code != 200:
        raise UpstreamError(_refusal(call.name, resp.status_code, resp))
    submitted = resp.json()
    task_id = str(submitted["id"])
    cost = submitted.get("cost")
    polling_url = submitted.get("polling_url") or f"{base}/v1/get_result?id={task_id}"
    interval = call.settings.poll_interval_s
    while True:
        await call.wait(interval, "the upstream task was still Pending")
        interval = min(call.settings.max_poll_interval_s, interval * 1.5)
        resp = await call.request("GET", polling_url, headers=headers)
        if resp.status_code == 404:
            raise UpstreamError(f"upstream {call.name!r} lost task {task_id} (Task not found)")
        if resp.status_code != 200:
            raise UpstreamError(_refusal(call.name, resp.status_code, resp))
        body = resp.json()
        status = body.get("status")
        if status == "Ready":
            result = body.get("result") or {}
            url = result.get("sample") if isinstance(result, dict) else None
            if not url:
                raise UpstreamError(f"upstream {call.name!r} reported Ready without result.sample")
            return await call.download(str(url)), task_id, cost if isinstance(cost, int | float) else None
        if status in ("Pending", "Queued", "Processing"):
            progress = body.get("progress")
            if isinstance(progress, int | float):
                on_progress(progress / 100 if progress > 1 else progress)
            continue
        if status in ("Request Moderated", "Content Moderated"):
            details = body.get("details") or {}
            reasons = details.get("Moderation Reasons") if isinstance(details, dict) else None
            category = (
                ", ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else "unspecified"
            )
            source = f"upstream:{call.name}"
            if status == "Request Moderated":
                raise EngineModerated("request", category, source)
            raise EngineModerated("content", category, source)
        if status == "Task not found":
            raise UpstreamError(f"upstream {call.name!r} lost task {task_id} (Task not found)")
        if status == "Error":
            raise UpstreamError(
                f"upstream {call.name!r} reported Error for task {task_id}: {_detail(body.get('details'))}"
            )
        raise UpstreamError(f"upstream {call.name!r} answered an unknown status {str(status)[:50]!r}")


def _refusal(name: str, status: int, resp: Any) -> str:
    if status in (401, 403):  # its message may quote (part of) our key: not shown
        return f"upstream {name!r} refused our API key (HTTP {status})"
    try:
        detail = _detail(resp.json())
    except ValueError:
        detail = resp.text[:300]
    what = {401: "refused our API key", 403: "refused our API key", 402: "is out of credits"}.get(
        status, "refused"
    )
    return f"upstream {name!r} {what} (HTTP {status}): {detail}"


async def run(
    call: UpstreamCall, model: str, request: EngineRequest, on_progress: ProgressCallback
) -> tuple[list[bytes], dict[str, Any]]:
    """``request.num_images`` images from BFL (one task each, run together), and what to
    record: the task ids and the cost BFL reported (credits → USD), if it reported one."""
    outcomes = await asyncio.gather(
        *(run_one(call, model, request, on_progress, i) for i in range(max(1, request.num_images)))
    )
    costs = [c for _, _, c in outcomes]
    extras: dict[str, Any] = {"upstream_ids": [t for _, t, _ in outcomes]}
    if all(c is not None for c in costs):
        extras["upstream_cost_usd"] = round(sum(c or 0.0 for c in costs) / 100, 6)
    return [data for data, _, _ in outcomes], extras
