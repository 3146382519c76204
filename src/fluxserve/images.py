"""Input images (decode, check, normalize) and output images (encode)."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from fluxserve.client.composition import stitch_horizontally as stitch_horizontally  # moved to the SDK
from fluxserve.netguard import UrlRefused, fetch_url

ALLOWED_INPUT_FORMATS = {"JPEG", "PNG", "WEBP"}


class InputImageError(ValueError):
    """An input image that cannot be used; the message says what to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    fetch_timeout_s: float
    allow_private_urls: bool


def _b64decode(text: str, param: str) -> bytes:
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputImageError(
            f"{param} is neither an http(s) URL, a data URL nor valid base64", param
        ) from exc


async def load_image_reference(value: str, param: str, limits: ImageLimits) -> bytes:
    """Raw bytes of an image given as an http(s) URL, a data URL or bare base64."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        try:
            return await fetch_url(
                value,
                max_bytes=limits.max_bytes,
                timeout_s=limits.fetch_timeout_s,
                allow_private=limits.allow_private_urls,
            )
        except UrlRefused as exc:
            raise InputImageError(f"{param}: {exc}", param) from exc
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header:
            raise InputImageError(f"{param}: data URLs must be base64-encoded", param)
        value = payload
    if len(value) * 3 // 4 > limits.max_bytes:
        raise InputImageError(f"{param} is larger than {limits.max_bytes} bytes", param)
    return _b64decode(value, param)


def normalize_image(data: bytes, param: str, limits: ImageLimits) -> bytes:
    """Check an uploaded image (size, format, pixel count, decompression bombs) and return it
    re-encoded as an RGB PNG, so that stored inputs are uniform and free of metadata."""
    if len(data) > limits.max_bytes:
        raise InputImageError(f"{param} is larger than {limits.max_bytes} bytes", param)
    if not data:
        raise InputImageError(f"{param} is empty", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_INPUT_FORMATS:
                raise InputImageError(
                    f"{param} must be a JPEG, PNG or WebP image, got {img.format or 'unknown'}",
                    param,
                )
            w, h = img.size
            if w * h > limits.max_pixels:
                raise InputImageError(
                    f"{param} is {w}x{h}: more than the {limits.max_pixels} pixels allowed", param
                )
            img.load()
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{param} has too many pixels", param) from exc
    except Exception as exc:  # PIL raises many types for corrupt input
        raise InputImageError(f"{param} is not a readable image ({exc.__class__.__name__})", param) from exc
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            bg = Image.new("RGB", img.size, (255, 255, 255))
            bg.paste(img, mask=img.getchannel("A"))
            img = bg
        else:
            img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def encode_image(img: Image.Image, fmt: str, compression: int | None = None) -> bytes:
    """Encode deterministically (no timestamps or random metadata), so seeds give identical bytes.

    ``compression`` follows OpenAI's ``output_compression``: 0-100, 100 = best quality.
    """
    out = io.BytesIO()
    img = img.convert("RGB")
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=compression if compression is not None else 95)
    elif fmt == "webp":
        img.save(out, format="WEBP", quality=compression if compression is not None else 95)
    elif fmt == "png":
        level = 6 if compression is None else max(0, min(9, round((100 - compression) / 100 * 9)))
        img.save(out, format="PNG", compress_level=level)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return out.getvalue()
