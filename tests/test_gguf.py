"""A GGUF transformer file (Q8_0, as GGUF model sites ship them) served with a base directory."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tiny_checkpoints import build_tiny_flux2_klein, save_gguf_transformer

from conftest import poll_result


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("ckpt") / "klein", seed=3)


def test_a_q8_gguf_file_with_a_base_serves_reproducibly(make_server, klein, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gguf_file = save_gguf_transformer(klein, tmp_path / "klein-Q8_0.gguf")
    models = {
        "flux-2-klein-4b": {"checkpoint": str(gguf_file), "base": str(klein), "steps": 2},
    }
    srv = make_server(models=json.dumps(models))
    ready = httpx.get(f"{srv.base_url}/readyz").json()
    assert "flux-2-klein-4b" not in ready.get("unavailable", {}), ready
    r = httpx.post(
        f"{srv.base_url}/v1/flux-2-klein-4b",
        json={"prompt": "a red cat", "seed": 3, "width": 64, "height": 64},
    )
    assert r.status_code == 200, r.text
    result = poll_result(srv.base_url, r.json()["id"])
    assert result["status"] == "Ready", result
    first = httpx.get(result["result"]["sample"]).content
    r = httpx.post(
        f"{srv.base_url}/v1/flux-2-klein-4b",
        json={"prompt": "a red cat", "seed": 3, "width": 64, "height": 64},
    )
    assert httpx.get(poll_result(srv.base_url, r.json()["id"])["result"]["sample"]).content == first


def test_gguf_with_quantize_is_a_clear_load_error(make_server, klein, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gguf_file = save_gguf_transformer(klein, tmp_path / "klein-Q8_0.gguf")
    models = {"flux-2-klein-4b": {"checkpoint": str(gguf_file), "base": str(klein), "quantize": "int8"}}
    srv = make_server(models=json.dumps(models))
    reason = httpx.get(f"{srv.base_url}/readyz").json()["unavailable"]["flux-2-klein-4b"]
    assert "quantized already" in reason and "klein-Q8_0.gguf" in reason
    r = httpx.post(f"{srv.base_url}/v1/flux-2-klein-4b", json={"prompt": "a red cat"})
    assert r.status_code == 503 and "quantized already" in r.json()["detail"]
