"""OpenAI edits with a mask: the transparent part of the mask is repainted, the rest kept, on the
embedded model (FLUX.1 Kontext inpainting); clear 400s for masks that cannot be used."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from openai import BadRequestError, OpenAI
from PIL import Image

from conftest import Server

SIZE = 256


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def red_image() -> bytes:
    return png(Image.new("RGB", (SIZE, SIZE), (210, 30, 30)))


def right_half_mask(size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    """Opaque left half (keep), transparent right half (edit)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (size[0] // 2, 0, size[0], size[1]))
    return png(mask)


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the embedded model (its VAE is trained, so kept pixels survive the round trip)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def halves_changed(result: bytes) -> tuple[float, float]:
    """Mean absolute change from the red input in the kept (left) and edited (right) halves,
    leaving out a band around the seam."""
    out = np.asarray(Image.open(io.BytesIO(result)).convert("RGB").resize((SIZE, SIZE))).astype(float)
    red = np.array([210, 30, 30], dtype=float)
    left = np.abs(out[:, : SIZE // 2 - 32] - red).mean()
    right = np.abs(out[:, SIZE // 2 + 32 :] - red).mean()
    return float(left), float(right)


def test_masked_edit_repaints_only_the_transparent_part(embedded_server: Server) -> None:
    client = OpenAI(base_url=f"{embedded_server.base_url}/v1", api_key="unused", max_retries=0)
    extra = {"seed": 5, "response_format": "b64_json"}
    prompt = "a green background"
    masked = client.images.edit(
        model="flux-kontext-pro",
        image=("red.png", red_image(), "image/png"),
        mask=("mask.png", right_half_mask(), "image/png"),
        prompt=prompt,
        extra_body=extra,
    )
    masked_png = base64.b64decode(masked.data[0].b64_json or "")
    kept, edited = halves_changed(masked_png)
    assert kept < 40, (kept, edited)  # the left half stays red (through the VAE)
    assert edited > kept + 40, (kept, edited)  # the right half was repainted

    # The same request as JSON with a data-URL mask gives the same image.
    data_url = "data:image/png;base64,"
    r = httpx.post(
        f"{embedded_server.base_url}/v1/images/edits",
        json={
            "model": "flux-kontext-pro",
            "prompt": prompt,
            "images": [{"image_url": data_url + base64.b64encode(red_image()).decode()}],
            "mask": {"image_url": data_url + base64.b64encode(right_half_mask()).decode()},
            **extra,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == masked_png


def test_a_mask_of_another_size_but_the_same_shape_is_scaled(embedded_server: Server) -> None:
    r = httpx.post(
        f"{embedded_server.base_url}/v1/images/edits",
        files=[
            ("image", ("red.png", red_image(), "image/png")),
            ("mask", ("m.png", right_half_mask((64, 64)), "image/png")),
        ],
        data={
            "model": "flux-kontext-pro",
            "prompt": "a green background",
            "seed": "5",
            "response_format": "b64_json",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    kept, edited = halves_changed(base64.b64decode(r.json()["data"][0]["b64_json"]))
    assert edited > kept + 40


@pytest.mark.parametrize(
    ("mask", "model", "needle"),
    [
        (png(Image.new("RGB", (SIZE, SIZE), (0, 0, 0))), "flux-kontext-pro", "no alpha channel"),
        (right_half_mask((SIZE, SIZE // 2)), "flux-kontext-pro", "another shape"),
        (b"not an image", "flux-kontext-pro", "mask"),
        (right_half_mask(), "flux-2-pro", "cannot take a mask"),
    ],
)
def test_unusable_masks_are_refused_clearly(
    embedded_server: Server, mask: bytes, model: str, needle: str
) -> None:
    client = OpenAI(base_url=f"{embedded_server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError) as err:
        client.images.edit(
            model=model,
            image=("red.png", red_image(), "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="a green background",
        )
    body = err.value.body
    assert body["param"] == "mask", body  # type: ignore[index]
    assert needle in body["message"], body  # type: ignore[index]


def test_a_json_mask_needs_an_image_url(embedded_server: Server) -> None:
    r = httpx.post(
        f"{embedded_server.base_url}/v1/images/edits",
        json={
            "prompt": "x",
            "images": [{"image_url": "data:image/png;base64,"}],
            "mask": {"file_id": "file-1"},
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "mask"
