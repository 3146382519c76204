"""The OpenAI Images API, driven by the official ``openai`` client over real HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from fluxserve.spec.geometry import aspect_to_size


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback")


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def test_generate_with_extra_body_returns_a_signed_url(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="flux-kontext-pro",
        prompt="a red circle in the center",
        extra_body={
            "aspect_ratio": "16:9",
            "seed": 42,
            "safety_tolerance": 2,
            "output_format": "png",
            "prompt_upsampling": False,
        },
    )
    assert len(resp.data) == 1
    url = resp.data[0].url
    assert url and "sig=" in url and "exp=" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.size == aspect_to_size("16:9")
    assert resp.size == "{}x{}".format(*aspect_to_size("16:9"))
    assert resp.output_format == "png"


def test_generate_b64_json_jpeg(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="flux-pro-1.1",
        prompt="a blue square",
        response_format="b64_json",
        size="512x768",
        extra_body={"output_format": "jpeg", "seed": 7},
    )
    data = base64.b64decode(resp.data[0].b64_json or "")
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (512, 768)
    assert resp.data[0].url is None


def test_n2_gives_two_different_images(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="flux-dev",
        prompt="a star",
        n=2,
        response_format="b64_json",
        extra_body={"seed": 5, "width": 256, "height": 256},
    )
    assert len(resp.data) == 2
    a, b = (base64.b64decode(d.b64_json or "") for d in resp.data)
    assert a != b
    assert Image.open(io.BytesIO(a)).size == (256, 256)


def test_same_seed_same_bytes_over_openai(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="flux-kontext-pro",
        prompt="a green ring",
        response_format="b64_json",
        size="256x256",
        extra_body={"seed": 1234},
    )
    r1 = client.images.generate(**kwargs)  # type: ignore[arg-type]
    r2 = client.images.generate(**kwargs)  # type: ignore[arg-type]
    assert r1.data[0].b64_json == r2.data[0].b64_json


def test_nested_extra_body_from_raw_http(server) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": "flux-kontext-pro",
        "prompt": "a pink diamond",
        "response_format": "b64_json",
        "extra_body": {"aspect_ratio": "9:16", "seed": 9, "output_format": "webp"},
    }
    r = httpx.post(server.base_url + "/v1/images/generations", json=body, timeout=60)
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert img.format == "WEBP" and img.size == aspect_to_size("9:16")
    # Top-level values win over nested ones.
    body["aspect_ratio"] = "1:1"
    r = httpx.post(server.base_url + "/v1/images/generations", json=body, timeout=60)
    assert r.json()["size"] == "1024x1024"


def test_edit_with_one_image_follows_its_shape(client: openai.OpenAI) -> None:
    src = _png((220, 30, 30), (600, 300))
    resp = client.images.edit(
        model="flux-kontext-pro",
        image=("in.png", src, "image/png"),
        prompt="make the background blue",
        response_format="b64_json",
        extra_body={"seed": 3},
    )
    img = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or "")))
    assert img.size == aspect_to_size("2:1")


def test_edit_with_two_images_and_form_options(client: openai.OpenAI) -> None:
    a = _png((220, 30, 30), (256, 256))
    b = _png((30, 60, 220), (256, 256))
    resp = client.images.edit(
        model="flux-kontext-max",
        image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
        prompt="put them together",
        response_format="url",
        extra_body={
            "aspect_ratio": "4:3",
            "seed": "11",
            "output_format": "jpeg",
            "prompt_upsampling": "false",
        },
    )
    r = httpx.get(resp.data[0].url or "")
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and img.size == aspect_to_size("4:3")


def test_edit_json_form_with_data_url(server) -> None:  # type: ignore[no-untyped-def]
    data_url = "data:image/png;base64," + base64.b64encode(_png((30, 170, 50), (300, 300))).decode()
    r = httpx.post(
        server.base_url + "/v1/images/edits",
        timeout=60,
        json={
            "model": "flux-kontext-pro",
            "prompt": "make it red",
            "images": [{"image_url": data_url}],
            "response_format": "b64_json",
            "size": "512x512",
        },
    )
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert img.size == (512, 512)


def test_bad_aspect_ratio_is_a_400_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="flux-kontext-pro", prompt="x", extra_body={"aspect_ratio": "4:1"})
    err = info.value.body
    assert isinstance(err, dict)
    assert err["param"] == "aspect_ratio"
    assert "3:7" in err["message"] and "7:3" in err["message"]


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"size": "1000x1000"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"n": 11}, "n"),
        ({"extra_body": {"safety_tolerance": 7}}, "safety_tolerance"),
        ({"response_format": "gif"}, "response_format"),
    ],
)
def test_invalid_values_are_400s(server, extra, param) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(server.base_url + "/v1/images/generations", json={"prompt": "x", **extra}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_and_edit_without_image(client: openai.OpenAI, server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-model", prompt="x")
    r = httpx.post(
        server.base_url + "/v1/images/edits",
        data={"prompt": "x"},
        files={"unused": ("a.txt", b"x", "text/plain")},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_edit_rejects_non_image_upload(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=("x.png", b"not an image at all", "image/png"), prompt="x")
    assert "image" in str(info.value.body)


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {
        "flux-kontext-pro",
        "flux-kontext-max",
        "flux-pro-1.1",
        "flux-pro-1.1-ultra",
        "flux-dev",
        "flux-pro",
        "gpt-image-1",
        "dall-e-3",
    } <= ids


def test_api_key_required_once_a_key_exists(make_server) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    srv = make_server(start=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fluxserve",
            "keys",
            "create",
            "--name",
            "ci",
            "--data-dir",
            str(srv.data_dir),
        ],
        capture_output=True,
        text=True,
        env=srv.env,
        check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("fsk_")
    srv.start()
    bad = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="fsk_wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="a red circle", size="256x256")
    good = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key)
    resp = good.images.generate(prompt="a red circle", size="256x256", response_format="b64_json")
    assert resp.data[0].b64_json


def _png_at(data: bytes, level: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="PNG", compress_level=level)
    return out.getvalue()


@pytest.mark.parametrize("level", [None, "9"])
def test_png_results_take_the_servers_zlib_level_not_output_compression(make_server, level) -> None:  # type: ignore[no-untyped-def]
    """PNG is lossless: ``output_compression`` (jpeg/webp quality) leaves it alone, and the
    bytes are the image encoded at ``png_compress_level`` (default 1)."""
    server = make_server(**({"png_compress_level": level} if level else {}))
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback")
    results = []
    for compression in (0, 100):
        resp = client.images.generate(
            model="flux-kontext-pro",
            prompt="a red circle in the center",
            response_format="b64_json",
            size="256x256",
            extra_body={"output_format": "png", "output_compression": compression, "seed": 3},
        )
        results.append(base64.b64decode(resp.data[0].b64_json or ""))
    assert results[0] == results[1]
    expected = int(level or 1)
    assert results[0] == _png_at(results[0], expected)
    assert results[0] != _png_at(results[0], 0)  # the level is really in the bytes
