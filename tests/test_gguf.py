"""A GGUF transformer file (Q8_0, as GGUF model sites ship them) served with a base directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from tiny_checkpoints import build_tiny_flux2_klein, save_gguf_transformer

from conftest import poll_result


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("ckpt") / "klein", seed=3)


def test_a_q8_gguf_file_serves_and_quantizing_it_again_is_a_clear_error(
    make_server, klein, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gguf_file = save_gguf_transformer(klein, tmp_path / "klein-Q8_0.gguf")
    again = shutil.copy(gguf_file, tmp_path / "klein-again-Q8_0.gguf")
    models = {
        "flux-2-klein-4b": {"checkpoint": str(gguf_file), "base": str(klein), "steps": 2},
        "flux-2-klein-9b": {"checkpoint": str(again), "base": str(klein), "quantize": "int8"},
    }
    srv = make_server(models=json.dumps(models))
    unavailable = httpx.get(f"{srv.base_url}/readyz").json()["unavailable"]
    assert set(unavailable) == {"flux-2-klein-9b"}
    assert "quantized already" in unavailable["flux-2-klein-9b"]
    assert "klein-again-Q8_0.gguf" in unavailable["flux-2-klein-9b"]
    r = httpx.post(f"{srv.base_url}/v1/flux-2-klein-9b", json={"prompt": "a red cat"})
    assert r.status_code == 503 and "quantized already" in r.json()["detail"]

    body = {"prompt": "a red cat", "seed": 3, "width": 64, "height": 64}
    samples = []
    for _ in range(2):
        r = httpx.post(f"{srv.base_url}/v1/flux-2-klein-4b", json=body)
        assert r.status_code == 200, r.text
        result = poll_result(srv.base_url, r.json()["id"])
        assert result["status"] == "Ready", result
        samples.append(httpx.get(result["result"]["sample"]).content)
    assert samples[0] == samples[1]
