"""The BFL async API over plain HTTP: submit, poll, download."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from conftest import poll_result
from fluxserve.spec.geometry import aspect_to_size


def submit(server, model: str, **body) -> dict:  # type: ignore[no-untyped-def,type-arg]
    r = httpx.post(f"{server.base_url}/v1/{model}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def run(server, model: str, **body) -> tuple[dict, Image.Image, bytes]:  # type: ignore[no-untyped-def,type-arg]
    sub = submit(server, model, **body)
    assert set(sub) >= {"id", "polling_url"}
    # polling_url is absolute and works as given
    assert sub["polling_url"].startswith(server.base_url)
    result = poll_result(server.base_url, sub["id"])
    assert result["status"] == "Ready", result
    r = httpx.get(result["result"]["sample"])
    assert r.status_code == 200
    return result, Image.open(io.BytesIO(r.content)), r.content


def test_submit_poll_download_kontext(server) -> None:  # type: ignore[no-untyped-def]
    result, img, _ = run(server, "flux-kontext-pro", prompt="a red circle", seed=42)
    assert img.format == "PNG" and img.size == (1024, 1024)  # Kontext defaults: png, 1:1
    res = result["result"]
    assert res["seed"] == 42 and res["prompt"] == "a red circle"
    assert res["end_time"] >= res["start_time"] and res["duration"] >= 0
    assert result["progress"] == 1.0


@pytest.mark.parametrize("model", ["flux-pro-1.1", "flux-dev", "flux-pro"])
def test_width_height_models_default_to_1024x768_jpeg(server, model: str) -> None:  # type: ignore[no-untyped-def]
    result, img, _ = run(server, model, prompt="a blue star", seed=1)
    assert img.format == "JPEG" and img.size == (1024, 768)


def test_width_height_and_steps_are_honoured(server) -> None:  # type: ignore[no-untyped-def]
    _, img, _ = run(
        server,
        "flux-dev",
        prompt="x",
        width=512,
        height=1440,
        steps=3,
        guidance=2.0,
        output_format="webp",
    )
    assert img.format == "WEBP" and img.size == (512, 1440)


def test_ultra_is_about_four_megapixels(server) -> None:  # type: ignore[no-untyped-def]
    _, img, _ = run(server, "flux-pro-1.1-ultra", prompt="a landscape", seed=3)
    w, h = img.size
    assert abs(w * h - 4 * 1024 * 1024) <= 0.05 * 4 * 1024 * 1024
    assert abs(w / h - 16 / 9) < 0.02


@pytest.mark.parametrize("ratio", ["3:7", "9:16", "2:3", "1:1", "4:3", "16:9", "21:9", "7:3"])
def test_aspect_ratio_table(server, ratio: str) -> None:  # type: ignore[no-untyped-def]
    _, img, _ = run(
        server,
        "flux-kontext-pro",
        prompt="a ring",
        aspect_ratio=ratio,
        seed=2,
        output_format="jpeg",
    )
    w, h = img.size
    assert (w, h) == aspect_to_size(ratio)
    assert w % 16 == 0 and h % 16 == 0
    assert abs(w * h - 1_048_576) <= 0.05 * 1_048_576
    a, b = (int(x) for x in ratio.split(":"))
    assert abs((w / h) / (a / b) - 1) < 0.02


def test_aspect_to_size_picks_exact_ratios_where_the_grid_allows() -> None:
    assert aspect_to_size("1:1") == (1024, 1024)
    assert aspect_to_size("21:9") == aspect_to_size("7:3")
    w, h = aspect_to_size("16:9")
    assert w / h == pytest.approx(16 / 9, rel=0.002)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(server) -> None:  # type: ignore[no-untyped-def]
    body = dict(prompt="a yellow triangle", aspect_ratio="3:2", output_format="png")
    _, _, a = run(server, "flux-kontext-pro", seed=77, **body)
    _, _, b = run(server, "flux-kontext-pro", seed=77, **body)
    _, _, c = run(server, "flux-kontext-pro", seed=78, **body)
    assert a == b
    assert a != c


def test_seed_is_drawn_and_recorded_when_omitted(server) -> None:  # type: ignore[no-untyped-def]
    r1, _, a = run(server, "flux-kontext-pro", prompt="a cyan ring", aspect_ratio="1:1")
    seed = r1["result"]["seed"]
    assert isinstance(seed, int)
    _, _, b = run(server, "flux-kontext-pro", prompt="a cyan ring", aspect_ratio="1:1", seed=seed)
    assert a == b


def test_kontext_input_images_base64_and_data_url(server) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (30, 60, 220)).save(buf, format="JPEG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    _, img, _ = run(
        server,
        "flux-kontext-pro",
        prompt="make the background red",
        input_image=b64,
        input_image_2="data:image/jpeg;base64," + b64,
        seed=5,
    )
    assert img.size == aspect_to_size("2:1")  # follows the first input image


def test_unknown_model_is_a_404_that_lists_the_models(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{server.base_url}/v1/flux-imaginary", json={"prompt": "x"})
    assert r.status_code == 404
    assert "flux-imaginary" in r.json()["detail"] and "flux-pro-1.1" in r.json()["detail"]


def test_task_not_found(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{server.base_url}/v1/get_result", params={"id": "no-such-id"})
    assert r.status_code == 200
    assert r.json()["status"] == "Task not found"


@pytest.mark.parametrize(
    "model,body,field",
    [
        ("flux-kontext-pro", {}, "prompt"),
        ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "1:3"}, "aspect_ratio"),
        ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "wide"}, "aspect_ratio"),
        ("flux-kontext-pro", {"prompt": "x", "safety_tolerance": 9}, "safety_tolerance"),
        ("flux-kontext-pro", {"prompt": "x", "output_format": "gif"}, "output_format"),
        ("flux-kontext-pro", {"prompt": "x", "input_image": "%%%not-base64%%%"}, "input_image"),
        ("flux-pro-1.1", {"prompt": "x", "width": 1000}, "width"),
        ("flux-pro-1.1", {"prompt": "x", "height": 1472}, "height"),
        ("flux-pro-1.1", {"prompt": "x", "width": 224}, "width"),
        ("flux-dev", {"prompt": "x", "steps": 0}, "steps"),
        ("flux-pro-1.1-ultra", {"prompt": "x", "aspect_ratio": "10:1"}, "aspect_ratio"),
    ],
)
def test_validation_errors_are_422_with_detail_list(server, model, body, field) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{server.base_url}/v1/{model}", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert set(detail[0]) >= {"loc", "msg", "type"}
    assert detail[0]["loc"][-1] == field


def test_out_of_range_ratio_message_names_the_range(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{server.base_url}/v1/flux-kontext-pro", json={"prompt": "x", "aspect_ratio": "8:3"})
    assert "between 3:7 and 7:3" in r.json()["detail"][0]["msg"]


def test_oversized_and_non_image_inputs_are_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(max_input_bytes="4096", max_input_pixels="10000")
    big = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(big, format="PNG")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "x", "input_image": base64.b64encode(big.getvalue()).decode()},
    )
    assert r.status_code == 422 and "larger than 4096 bytes" in r.json()["detail"][0]["msg"]
    many = io.BytesIO()
    Image.new("RGB", (200, 200)).save(many, format="PNG")  # small file, too many pixels
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "x", "input_image": base64.b64encode(many.getvalue()).decode()},
    )
    assert r.status_code == 422 and "pixels" in r.json()["detail"][0]["msg"]
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, format="GIF")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "x", "input_image": base64.b64encode(gif.getvalue()).decode()},
    )
    assert r.status_code == 422 and "JPEG, PNG or WebP" in r.json()["detail"][0]["msg"]


def test_x_key_and_bearer_auth(make_server) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    srv = make_server(start=False)
    key = subprocess.run(
        [sys.executable, "-m", "fluxserve", "keys", "create", "--data-dir", str(srv.data_dir)],
        capture_output=True,
        text=True,
        env=srv.env,
        check=True,
    ).stdout.strip()
    srv.start()
    url = f"{srv.base_url}/v1/flux-kontext-pro"
    r = httpx.post(url, json={"prompt": "x"})
    assert r.status_code == 401 and "x-key" in r.json()["detail"]
    r = httpx.post(url, json={"prompt": "x"}, headers={"x-key": "fsk_nope"})
    assert r.status_code == 401
    r = httpx.post(url, json={"prompt": "x", "seed": 1}, headers={"x-key": key})
    assert r.status_code == 200
    job_id = r.json()["id"]
    assert httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job_id}).status_code == 401
    result = poll_result(srv.base_url, job_id, headers={"Authorization": f"Bearer {key}"})
    assert result["status"] == "Ready"
    # Signed URLs need no key: the signature is the credential.
    assert httpx.get(result["result"]["sample"]).status_code == 200
