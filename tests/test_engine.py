"""The diffusers engine with both pipeline kinds, through the server."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import openai
from PIL import Image


def test_plain_flux_checkpoint_serves_width_height_models(make_server, tiny_flux_checkpoint) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(models=json.dumps({"flux-dev": {"checkpoint": str(tiny_flux_checkpoint)}}))
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x")
    resp = client.images.generate(
        model="flux-dev",
        prompt="a red square",
        size="256x512",
        response_format="b64_json",
        extra_body={"seed": 4},
    )
    img = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or "")))
    assert img.size == (256, 512)
    # A Kontext-family id pointed at a plain FLUX checkpoint fails clearly, not silently.
    srv2 = make_server(models=json.dumps({"flux-kontext-pro": {"checkpoint": str(tiny_flux_checkpoint)}}))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    r = httpx.post(
        f"{srv2.base_url}/v1/images/edits",
        timeout=60,
        files={"image": ("a.png", buf.getvalue(), "image/png")},
        data={"prompt": "x", "model": "flux-kontext-pro"},
    )
    assert r.status_code == 500
    assert "not a Kontext checkpoint" in r.json()["error"]["message"]


def test_readyz_reports_a_missing_checkpoint(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False, default_checkpoint=str(tmp_path / "nowhere"))
    import pytest

    with pytest.raises(TimeoutError):
        srv.start(timeout=6)
    # The server answers while it loads; the failure shows once loading has been tried. (On a
    # busy machine it may still be importing after the 6 s above: it is not listening yet.)
    deadline = time.monotonic() + 60

    def readyz() -> httpx.Response | None:
        try:
            return httpx.get(srv.base_url + "/readyz")
        except httpx.ConnectError:
            return None

    while (r := readyz()) is None or r.json()["status"] == "loading":
        assert time.monotonic() < deadline, "still loading after a minute"
        time.sleep(0.2)
    assert r.status_code == 503
    assert "model_index.json" in r.json()["error"]
    assert httpx.get(srv.base_url + "/healthz").status_code == 200
