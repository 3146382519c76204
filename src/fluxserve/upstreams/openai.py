"""An OpenAI-compatible Images API as an upstream: ``POST /images/generations`` (or
``/images/edits`` with the input images), answered with ``b64_json`` or a URL we download."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, ImageOps

from fluxserve.engines import EngineModerated, EngineRequest
from fluxserve.upstreams.call import UpstreamCall, UpstreamError

MODERATION_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
"""OpenAI's error codes for a refused prompt or input: the job ends as Request Moderated."""


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _openai_mask(mask: Image.Image, size: tuple[int, int]) -> bytes:
    """Our mask (white = repaint) as OpenAI's: transparent where the image is to be edited."""
    rgba = Image.new("RGBA", size, (0, 0, 0, 255))
    rgba.putalpha(ImageOps.invert(mask.convert("L").resize(size)))
    return _png(rgba)


def _error(body: Any) -> tuple[str | None, str]:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return (str(err["code"]) if err.get("code") else None), str(err.get("message", ""))[:300]
    return None, str(body)[:300]


async def run(call: UpstreamCall, model: str, request: EngineRequest) -> tuple[list[bytes], dict[str, Any]]:
    """Generate (or edit, when the request has input images) at an OpenAI-compatible API.
    Its call is synchronous: one request that may take as long as ``max_wait_s``."""
    s = call.settings
    base = s.base_url.rstrip("/")
    headers = {"accept": "application/json"}
    if s.api_key:
        headers["authorization"] = f"Bearer {s.api_key}"
    fields: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "n": max(1, request.num_images),
        "size": f"{request.width}x{request.height}",
    }
    if s.response_format:
        fields["response_format"] = s.response_format
    timeout = max(0.1, call.remaining())
    if request.images:
        name = "image" if len(request.images) == 1 else "image[]"
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            (name, (f"image{i}.png", _png(img), "image/png")) for i, img in enumerate(request.images)
        ]
        if request.mask is not None:
            files.append(
                ("mask", ("mask.png", _openai_mask(request.mask, request.images[0].size), "image/png"))
            )
        data = {k: str(v) for k, v in fields.items()}
        resp = await call.request(
            "POST", f"{base}/images/edits", data=data, files=files, headers=headers, timeout=timeout
        )
    else:
        resp = await call.request(
            "POST", f"{base}/images/generations", json=fields, headers=headers, timeout=timeout
        )
    try:
        body = resp.json()
    except ValueError:
        body = {"error": {"message": resp.text[:300]}}
    if resp.status_code != 200:
        code, message = _error(body)
        if resp.status_code == 400 and code in MODERATION_CODES:
            raise EngineModerated("request", code or "unspecified", f"upstream:{call.name}")
        if resp.status_code in (401, 403):  # its message may quote (part of) our key: not shown
            raise UpstreamError(f"upstream {call.name!r} refused our API key (HTTP {resp.status_code})")
        raise UpstreamError(f"upstream {call.name!r} refused (HTTP {resp.status_code}, {code}): {message}")
    images: list[bytes] = []
    for item in body.get("data") or []:
        if item.get("b64_json"):
            try:
                images.append(base64.b64decode(item["b64_json"], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise UpstreamError(f"upstream {call.name!r} sent an undecodable b64_json") from exc
        elif item.get("url"):
            images.append(await call.download(str(item["url"])))
    if not images:
        raise UpstreamError(f"upstream {call.name!r} answered without an image")
    return images, {}
