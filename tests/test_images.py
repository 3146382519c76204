"""Input image limits: aspect ratio, working size, and errors that are always InputImageError."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import random
import time

import numpy as np
import pytest
from PIL import Image

from fluxserve.images import ImageLimits, InputImageError, load_image_reference, normalize_image

LIMITS = ImageLimits(
    max_bytes=20 * 1024 * 1024, max_pixels=25_000_000, fetch_timeout_s=2.0, allow_private_urls=False
)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return im.size


def test_sliver_of_25_million_by_1_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (25_000_000, 1)))  # a small file, within the pixel count
    assert len(data) < 100_000
    start = time.perf_counter()
    with pytest.raises(InputImageError) as info:
        normalize_image(data, "input_image", LIMITS)
    assert time.perf_counter() - start < 1.0
    assert info.value.param == "input_image"
    assert "25000000x1" in info.value.message and "2.5e+07:1" in info.value.message
    assert "16:1" in info.value.message


@pytest.mark.parametrize("size", [(20_000, 1), (1, 20_000), (1700, 100), (100, 1700)])
def test_extreme_aspect_ratios_are_refused(size: tuple[int, int]) -> None:
    with pytest.raises(InputImageError, match="aspect ratio of .* at most 16:1"):
        normalize_image(_encode(Image.new("RGB", size)), "image", LIMITS)


@pytest.mark.parametrize("size", [(1600, 100), (100, 1600), (320, 160), (1, 1)])
def test_aspect_ratios_within_the_limit_pass_unchanged(size: tuple[int, int]) -> None:
    assert _size(normalize_image(_encode(Image.new("RGB", size, (9, 99, 199))), "image", LIMITS)) == size


def test_aspect_ratio_limit_is_configurable() -> None:
    strict = ImageLimits(**{**LIMITS.__dict__, "max_aspect_ratio": 4.0})
    with pytest.raises(InputImageError, match="at most 4:1"):
        normalize_image(_encode(Image.new("RGB", (500, 100))), "image", strict)


def test_large_inputs_are_downscaled_to_the_working_budget() -> None:
    assert LIMITS.max_working_pixels == 4 * 1024 * 1024 and LIMITS.max_aspect_ratio == 16.0
    gradient = np.tile(np.linspace(0, 255, 2600, dtype=np.uint8), (1700, 1))
    w, h = _size(normalize_image(_encode(Image.fromarray(gradient).convert("RGB")), "image", LIMITS))
    assert w * h <= 4 * 1024 * 1024 and w * h > 0.99 * 4 * 1024 * 1024
    assert w / h == pytest.approx(2600 / 1700, rel=0.002)


@pytest.mark.parametrize("size", [(300, 200), (2000, 125), (125, 2000)])
def test_downscale_keeps_the_aspect_ratio(size: tuple[int, int]) -> None:
    small = ImageLimits(**{**LIMITS.__dict__, "max_working_pixels": 10_000})
    w, h = _size(normalize_image(_encode(Image.new("RGB", size, (200, 10, 10))), "image", small))
    assert w * h <= 10_000
    assert w / h == pytest.approx(size[0] / size[1], rel=0.05)


def _odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "16-bit grey PNG": _encode(Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16))),
        "1-bit PNG": _encode(Image.new("1", (10, 10))),
        "LA PNG": _encode(Image.new("LA", (10, 10))),
        "palette PNG with transparency": _encode(Image.new("P", (10, 10)), transparency=0),
        "CMYK JPEG": _encode(Image.new("CMYK", (10, 10)), "JPEG"),
        "RGBA WebP": _encode(Image.new("RGBA", (10, 10)), "WEBP"),
        "multi-picture JPEG": _encode(
            Image.new("RGB", (10, 10)), "MPO", save_all=True, append_images=[Image.new("RGB", (10, 10))]
        ),
    }


@pytest.mark.parametrize("name", list(_odd_images()))
def test_unusual_modes_become_rgb(name: str) -> None:
    assert _size(normalize_image(_odd_images()[name], "image", LIMITS)) in ((20, 20), (10, 10))


def test_normalize_raises_only_input_image_error() -> None:
    valid = [_encode(Image.new("RGB", (64, 48), (1, 2, 3)), fmt) for fmt in ("PNG", "JPEG", "WEBP")]
    other = [_encode(Image.new("RGB", (8, 8)), fmt) for fmt in ("GIF", "TIFF", "BMP", "ICO")]
    rng = random.Random(3)
    samples = [b"", b"\x89PNG\r\n\x1a\n", *other, bytes(rng.randbytes(300))]
    for data in valid:
        samples += [data[:cut] for cut in range(0, len(data), max(1, len(data) // 40))]
        for _ in range(40):  # flipped bytes
            blob = bytearray(data)
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
            samples.append(bytes(blob))
    for data in samples:
        with contextlib.suppress(InputImageError):
            normalize_image(data, "image", LIMITS)


BAD_REFERENCES = [
    "\u00fc" * 12,  # non-ASCII "base64"
    "\ud800",
    "QUJD\ud800",
    "data:,abc",
    "data:image/png;base64,%%%",
    "data:image/png;base64,\u00fc\u00fc",
    "data:image/png;base64,\ud800",
    "data:image/png;base64," + "A" * 3_000_000,  # larger than max_bytes below
    "A" * 3_000_000,
    "\x00",
    "====",
    "http://h:99999/x.png",
    "http://[::1/x.png",
    "https://" + "a" * 64 + ".com/x.png",
    "http://\u2000.com/",
    "http://ok.invalid/\ud800",
    "http://127.0.0.1/x.png",  # loopback: refused before connecting
    "HTTP://[::1]/x.png",
    "http://2130706433/x.png",
]


@pytest.mark.parametrize("value", BAD_REFERENCES, ids=range(len(BAD_REFERENCES)))
def test_load_image_reference_raises_only_input_image_error(value: str) -> None:
    limits = ImageLimits(**{**LIMITS.__dict__, "max_bytes": 1_000_000})
    with pytest.raises(InputImageError) as info:
        asyncio.run(load_image_reference(value, "input_image", limits))
    assert info.value.param == "input_image" and info.value.message


def test_load_image_reference_fuzz() -> None:
    rng = random.Random(11)
    pool = "ABCDEFabcdef0123456789+/=_- \n\t%:;,\u00e9\u4e2d\ud800\udfff"

    async def run() -> None:
        for _ in range(300):
            value = rng.choice(["", "data:", "data:image/png;base64,"]) + "".join(
                rng.choice(pool) for _ in range(rng.randint(0, 40))
            )
            with contextlib.suppress(InputImageError):
                await load_image_reference(value, "image", LIMITS)

    asyncio.run(run())


def test_data_url_scheme_and_base64_marker_are_case_insensitive() -> None:
    png = _encode(Image.new("RGB", (4, 4)))
    ref = "DATA:image/png;BASE64," + base64.b64encode(png).decode()
    assert asyncio.run(load_image_reference(ref, "image", LIMITS)) == png
