"""Checkpoint sources, families and partial availability, through the real server.

One server serves a tiny FLUX.2 klein checkpoint three ways (directory, hub repo id from a
local hub cache, single original-layout transformer file with a base) next to two broken
checkpoints; nothing is downloaded.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from tiny_checkpoints import build_tiny_flux2_klein, lay_out_hub_cache, save_single_file_transformer

from conftest import poll_result


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("ckpt") / "tiny-klein", seed=3)


@pytest.fixture
def srv(make_server, klein, tiny_checkpoint, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    single = save_single_file_transformer(klein, tmp_path / "klein-transformer.safetensors")
    hub = tmp_path / "hf" / "hub"
    lay_out_hub_cache(hub, "acme/tiny-klein", klein)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wrong = shutil.copy(single, tmp_path / "flux2-file-for-a-flux1-base.safetensors")
    no_encoder = shutil.copytree(klein, tmp_path / "no-encoder")
    shutil.rmtree(no_encoder / "text_encoder")
    models = {
        "flux-kontext-pro": {"checkpoint": str(klein), "steps": 3},
        "flux-kontext-max": {"checkpoint": str(single), "base": str(klein), "steps": 3},
        "flux-pro": {"checkpoint": "acme/tiny-klein", "steps": 3},
        "flux-pro-1.1": {"checkpoint": str(no_encoder)},
        "flux-pro-1.1-ultra": {"checkpoint": str(wrong), "base": str(tiny_checkpoint)},
    }
    return make_server(models=json.dumps(models), memory="auto", quantize="none")


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def test_readyz_lists_broken_models_and_the_rest_serve(srv) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(srv.base_url + "/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    missing = body["unavailable"]["flux-pro-1.1"]
    assert (
        "flux-pro-1.1" in missing
        and "no-encoder" in missing
        and "missing component 'text_encoder'" in missing
    )
    wrong = body["unavailable"]["flux-pro-1.1-ultra"]
    assert "wrong family" in wrong and "flux2-file-for-a-flux1-base" in wrong
    assert set(body["unavailable"]) == {"flux-pro-1.1", "flux-pro-1.1-ultra"}
    # A request for a broken model is refused before any work, naming the cause, by both protocols.
    r = httpx.post(f"{srv.base_url}/v1/flux-pro-1.1", json={"prompt": "a red square"}, timeout=30)
    assert r.status_code == 503
    assert "missing component 'text_encoder'" in r.json()["detail"]
    r = httpx.post(
        f"{srv.base_url}/v1/images/generations", json={"model": "flux-pro-1.1-ultra", "prompt": "a cat"}
    )
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_unavailable" and "wrong family" in error["message"]
    # Other models, including the built-in ids on the default checkpoint, still work.
    r = httpx.post(f"{srv.base_url}/v1/flux-dev", json={"prompt": "a cat", "width": 256, "height": 256})
    assert poll_result(srv.base_url, r.json()["id"])["status"] == "Ready"


def test_flux2_takes_reference_images_natively_through_both_protocols(srv) -> None:  # type: ignore[no-untyped-def]
    refs = [_png(c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0), (9, 9, 9), (200, 200, 0)]]
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={
            "prompt": "a red cat with a blue dog",
            "input_image": base64.b64encode(refs[0]).decode(),
            "input_image_2": base64.b64encode(refs[1]).decode(),
            "seed": 1,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    result = poll_result(srv.base_url, r.json()["id"])
    assert result["status"] == "Ready", result
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120)
    for count in (2, 4):  # the protocols' limit is spec.MAX_INPUT_IMAGES (4) for now
        resp = client.images.edit(
            model="flux-kontext-pro",
            image=[(f"{i}.png", refs[i], "image/png") for i in range(count)],
            prompt="a red cat",
            response_format="b64_json",
        )
        assert Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or ""))).size[0] > 0
    resp = client.images.generate(
        model="flux-kontext-pro", prompt="a green square", response_format="b64_json"
    )
    assert resp.data[0].b64_json


def test_single_file_and_hub_id_match_the_directory(srv) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120)

    def pixels(model: str) -> np.ndarray:
        resp = client.images.generate(
            model=model,
            prompt="a blue circle",
            size="1024x1024",
            response_format="b64_json",
            extra_body={"seed": 7, "output_format": "png"},
        )
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or ""))))

    from_dir = pixels("flux-kontext-pro")
    assert np.array_equal(pixels("flux-kontext-max"), from_dir)  # single file + base
    assert np.array_equal(pixels("flux-pro"), from_dir)  # hub repo id, offline cache


def test_flux2_engine_takes_five_references_as_a_list(klein) -> None:  # type: ignore[no-untyped-def]
    from fluxserve.engines import EngineRequest
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    refs = [Image.open(io.BytesIO(_png((40 * i, 0, 0)))) for i in range(5)]
    out = engine.generate(EngineRequest(str(klein), "a red cat", 256, 256, 1, 2, 1.0, images=refs))
    assert out[0].size == (256, 256)
    with pytest.raises(ValueError, match="at most 8 input images"):
        engine.generate(EngineRequest(str(klein), "a red cat", 256, 256, 1, 2, 1.0, images=refs * 2))
