"""Input images as callers give them (paths, bytes, PIL images, URLs), read into bytes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from fluxserve.client.errors import ValidationError
from fluxserve.client.session import Session

ImageInput = str | Path | bytes | Image.Image
"""A file path, raw bytes, a PIL image, or an http(s) / data URL."""


def is_http_url(image: ImageInput) -> bool:
    """Whether the input is an http(s) URL (which a BFL server can fetch itself)."""
    return isinstance(image, str) and image.startswith(("http://", "https://"))


async def image_bytes(image: ImageInput, session: Session) -> bytes:
    """The input's encoded bytes: a PIL image as PNG, a URL downloaded, a file read."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(image, bytes):
        return image
    text = str(image)
    if text.startswith(("http://", "https://")):
        resp = await session.request("GET", text)
        if resp.status_code != 200:
            raise ValidationError(f"could not download {text}: HTTP {resp.status_code}")
        return resp.content
    if text.startswith("data:"):
        return base64.b64decode(text.partition(",")[2])
    path = Path(text)
    if not path.is_file():
        raise ValidationError(f"input image {text!r} is not a file, a URL or a data URL")
    return path.read_bytes()


async def load_image(image: ImageInput, session: Session) -> Image.Image:
    """The input as a PIL image (a PIL image is returned as it is)."""
    if isinstance(image, Image.Image):
        return image
    return Image.open(io.BytesIO(await image_bytes(image, session)))
