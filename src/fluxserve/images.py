"""Input images (decode, check, normalize) and output images (encode)."""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image

from fluxserve.client.composition import stitch_horizontally as stitch_horizontally  # moved to the SDK
from fluxserve.netguard import UrlRefused, fetch_url

ALLOWED_INPUT_FORMATS = {"JPEG", "PNG", "WEBP"}
# Pillow reads multi-picture JPEGs (as phone cameras write them) as "MPO": still a JPEG.
_READ_FORMATS = ALLOWED_INPUT_FORMATS | {"MPO"}


class InputImageError(ValueError):
    """An input image that cannot be used; the message says what to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be, and how it is fetched.

    ``max_pixels`` refuses an image outright; ``max_working_pixels`` is the size an accepted
    image is scaled down to (Lanczos, aspect kept), so that the engine's work per input is
    bounded; ``max_aspect_ratio`` (long side / short side) refuses slivers such as 25,000,000x1,
    which pass any pixel count."""

    max_bytes: int
    max_pixels: int
    fetch_timeout_s: float
    allow_private_urls: bool
    max_aspect_ratio: float = 16.0
    max_working_pixels: int = 4 * 1024 * 1024


def _b64decode(text: str, param: str) -> bytes:
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputImageError(
            f"{param} is neither an http(s) URL, a data URL nor valid base64", param
        ) from exc


async def load_image_reference(value: str, param: str, limits: ImageLimits) -> bytes:
    """Raw bytes of an image given as an http(s) URL (fetched through the SSRF guard), a data
    URL or bare base64. Raises only :class:`InputImageError`, whatever ``value`` holds."""
    value = value.strip()
    if value[:8].lower().startswith(("http://", "https://")):
        try:
            return await fetch_url(
                value,
                max_bytes=limits.max_bytes,
                timeout_s=limits.fetch_timeout_s,
                allow_private=limits.allow_private_urls,
            )
        except UrlRefused as exc:
            raise InputImageError(f"{param}: {exc}", param) from exc
    if value[:5].lower() == "data:":
        header, _, payload = value.partition(",")
        if ";base64" not in header.lower():
            raise InputImageError(f"{param}: data URLs must be base64-encoded", param)
        value = payload
    if len(value) * 3 // 4 > limits.max_bytes:
        raise InputImageError(f"{param} is larger than {limits.max_bytes} bytes", param)
    return _b64decode(value, param)


def _decode_checked(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    """Decode an upload after checking its size, format, pixel count and aspect ratio (and
    refusing decompression bombs). Raises only :class:`InputImageError`."""
    if len(data) > limits.max_bytes:
        raise InputImageError(f"{param} is larger than {limits.max_bytes} bytes", param)
    if not data:
        raise InputImageError(f"{param} is empty", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the allowed formats' parsers ever see the bytes.
            try:
                img: Image.Image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_INPUT_FORMATS))
            except Image.UnidentifiedImageError as exc:
                raise InputImageError(f"{param} must be a JPEG, PNG or WebP image", param) from exc
            if img.format not in _READ_FORMATS:
                raise InputImageError(
                    f"{param} must be a JPEG, PNG or WebP image, got {img.format or 'unknown'}",
                    param,
                )
            w, h = img.size
            if w * h > limits.max_pixels:
                raise InputImageError(
                    f"{param} is {w}x{h}: more than the {limits.max_pixels} pixels allowed", param
                )
            ratio = max(w, h) / max(1, min(w, h))
            if ratio > limits.max_aspect_ratio:
                raise InputImageError(
                    f"{param} is {w}x{h}, an aspect ratio of {ratio:.4g}:1: at most "
                    f"{limits.max_aspect_ratio:g}:1 (or 1:{limits.max_aspect_ratio:g}) is allowed",
                    param,
                )
            img.load()
            return img
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{param} has too many pixels", param) from exc
    except Exception as exc:  # PIL raises many types for corrupt input
        raise InputImageError(f"{param} is not a readable image ({exc.__class__.__name__})", param) from exc


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def normalize_image(data: bytes, param: str, limits: ImageLimits) -> bytes:
    """Check an uploaded image (size, format, pixel count, aspect ratio, decompression bombs)
    and return it re-encoded as an RGB PNG of at most ``limits.max_working_pixels`` pixels, so
    that stored inputs are uniform, free of metadata and cheap for the engine. Raises only
    :class:`InputImageError`."""
    img = _to_rgb(_decode_checked(data, param, limits))
    w, h = img.size
    if w * h > limits.max_working_pixels:
        # Downscale to the pixel budget, aspect kept: bounded work for the engine.
        scale = math.sqrt(limits.max_working_pixels / (w * h))
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _png(img)


def normalize_mask(data: bytes, param: str, limits: ImageLimits, image_size: tuple[int, int]) -> bytes:
    """An OpenAI edit mask (a PNG whose transparent pixels mark where to edit) as a grayscale
    PNG at ``image_size`` (the normalized image's size): white = repaint, black = keep, soft in
    between. The mask must have an alpha channel and the image's shape."""
    img = _decode_checked(data, param, limits)
    if img.format != "PNG":
        raise InputImageError(f"{param} must be a PNG with transparency (an alpha channel)", param)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA", "PA"):
        raise InputImageError(
            f"{param} has no alpha channel: the mask's fully transparent pixels mark where to edit",
            param,
        )
    w, h = img.size
    iw, ih = image_size
    if abs(w / h - iw / ih) > 0.01 * (iw / ih):
        raise InputImageError(
            f"{param} is {w}x{h} but the image has another shape: give a mask of the image's size",
            param,
        )
    edit = img.getchannel("A").point(lambda a: 255 - a)
    return _png(edit.resize(image_size, Image.Resampling.BILINEAR))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def encode_image(img: Image.Image, fmt: str, compression: int | None, *, png_level: int) -> bytes:
    """Encode deterministically (no timestamps or random metadata), so seeds give identical bytes.

    ``compression`` follows OpenAI's ``output_compression`` (0-100, 100 = best quality), which
    applies to jpeg and webp; PNG is lossless and takes the zlib level ``png_level`` instead.
    """
    out = io.BytesIO()
    img = img.convert("RGB")
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=compression if compression is not None else 95)
    elif fmt == "webp":
        img.save(out, format="WEBP", quality=compression if compression is not None else 95)
    elif fmt == "png":
        img.save(out, format="PNG", compress_level=png_level)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return out.getvalue()
