"""FLUX.2 takes its reference images natively (a list, not one stitched image): tiny random
FLUX.2 and FLUX.2 klein checkpoints, built here, generate through both protocols with 2 and
with 5 reference images. Nothing is downloaded.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from tiny_checkpoints import build_tiny_flux2, build_tiny_flux2_klein

from conftest import Server, poll_result

COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (250, 250, 0), (0, 0, 0)]


@pytest.fixture(scope="module")
def flux2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2(tmp_path_factory.mktemp("ckpt") / "tiny-flux2", seed=4)


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("ckpt") / "tiny-klein", seed=5)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, flux2: Path, klein: Path) -> Iterator[Server]:
    """flux-2-pro on the FLUX.2 checkpoint; flux-2-max (8 references) and flux-2-klein-4b (4)
    on the klein one, which also serves every other id."""
    models = {
        "flux-2-pro": {"checkpoint": str(flux2), "steps": 2},
        "flux-2-max": {"checkpoint": str(klein), "steps": 2},
        "flux-2-klein-4b": {"checkpoint": str(klein), "steps": 2},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        FLUXSERVE_DEFAULT_CHECKPOINT=str(klein),
        FLUXSERVE_MODELS=json.dumps(models),
        FLUXSERVE_LOG_LEVEL="warning",
    )
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def _png(color: tuple[int, int, int], size: tuple[int, int] = (48, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


REFS = [_png(c) for c in COLOURS]


def _bfl(srv: Server, model: str, count: int) -> np.ndarray:
    body: dict[str, Any] = {"prompt": "a red cat with a blue dog", "seed": 11, "width": 128, "height": 96}
    for i in range(count):
        body["input_image" if i == 0 else f"input_image_{i + 1}"] = base64.b64encode(REFS[i]).decode()
    r = httpx.post(f"{srv.base_url}/v1/{model}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["input_mp"] == pytest.approx(count * 48 * 64 / 1e6, abs=0.001)
    result = poll_result(srv.base_url, r.json()["id"], timeout=120)
    assert result["status"] == "Ready", result
    sample = httpx.get(result["result"]["sample"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(sample)).convert("RGB"))


def _openai(srv: Server, model: str, count: int) -> np.ndarray:
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120)
    resp = client.images.edit(
        model=model,
        image=[(f"{i}.png", REFS[i], "image/png") for i in range(count)],
        prompt="a red cat with a blue dog",
        size="256x256",
        response_format="b64_json",
        extra_body={"seed": 11, "output_format": "png"},
    )
    image = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or "")))
    assert image.size == (256, 256)
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("model", ["flux-2-pro", "flux-2-max"], ids=["flux2", "klein"])
def test_two_and_five_references_through_both_protocols(srv: Server, model: str) -> None:
    two, five = _bfl(srv, model, 2), _bfl(srv, model, 5)
    assert two.shape == five.shape == (96, 128, 3)
    assert not np.array_equal(two, five)  # the three more references reach the model
    two_openai, five_openai = _openai(srv, model, 2), _openai(srv, model, 5)
    assert not np.array_equal(two_openai, five_openai)


def test_klein_route_takes_four_references(srv: Server) -> None:
    assert _bfl(srv, "flux-2-klein-4b", 2).shape == (96, 128, 3)
    body = {"prompt": "a cat", **{f"input_image_{i}": "x" for i in range(2, 6)}, "input_image": "x"}
    r = httpx.post(f"{srv.base_url}/v1/flux-2-klein-4b", json=body, timeout=30)
    assert r.status_code == 422 and "at most 4 input images" in r.text
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120)
    with pytest.raises(openai.BadRequestError, match="at most 4 input images"):
        client.images.edit(
            model="flux-2-klein-4b",
            image=[(f"{i}.png", REFS[i], "image/png") for i in range(5)],
            prompt="a cat",
        )


@pytest.mark.parametrize("which", ["flux2", "klein"])
def test_engine_passes_references_as_a_list(
    which: str, flux2: Path, klein: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    from fluxserve.engines import EngineRequest
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    pipeline = diffusers.Flux2Pipeline if which == "flux2" else diffusers.Flux2KleinPipeline
    seen: list[Any] = []
    original = pipeline.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("image"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "__call__", spy)
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    refs = [Image.open(io.BytesIO(data)) for data in REFS]
    checkpoint = str(flux2 if which == "flux2" else klein)
    out = engine.generate(EngineRequest(checkpoint, "a red cat", 128, 96, 1, 2, 4.0, images=refs))
    assert out[0].size == (128, 96)
    assert isinstance(seen[0], list) and len(seen[0]) == 5  # five images, not one stitched
    assert all(min(im.size) >= 64 for im in seen[0])  # each fitted on its own, FLUX.2's minimum
