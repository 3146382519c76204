"""The SSRF guard on user-supplied URLs."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from conftest import poll_result
from fluxserve.netguard import UrlRefused, check_url


@pytest.fixture
def image_host():  # type: ignore[no-untyped-def]
    """A local HTTP server with one PNG (and a redirect to it), on loopback."""
    buf = io.BytesIO()
    Image.new("RGB", (320, 160), (245, 140, 20)).save(buf, format="PNG")
    png = buf.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/img.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/x.png",
        "http://192.168.0.1/x.png",
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
    ],
)
def test_check_url_refuses_non_public_targets_without_connecting(url: str) -> None:
    with pytest.raises(UrlRefused):
        asyncio.run(check_url(url, allow_private=False))


def test_server_refuses_loopback_input_url(server, image_host) -> None:  # type: ignore[no-untyped-def]
    for url in (image_host + "/img.png", "http://169.254.169.254/latest", "http://10.0.0.1/a.png"):
        r = httpx.post(f"{server.base_url}/v1/flux-kontext-pro", json={"prompt": "x", "input_image": url})
        assert r.status_code == 422, r.text
        assert "non-public address" in r.json()["detail"][0]["msg"]


def test_allow_private_urls_setting_fetches_with_redirects(make_server, image_host) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(allow_private_urls="1")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "x", "input_image": image_host + "/redirect", "seed": 1},
    )
    assert r.status_code == 200, r.text
    assert r.json()["input_mp"] == pytest.approx(320 * 160 / 1e6, abs=0.001)
    assert poll_result(srv.base_url, r.json()["id"])["status"] == "Ready"
    # The OpenAI JSON edit form takes the same URLs.
    r = httpx.post(
        f"{srv.base_url}/v1/images/edits",
        timeout=60,
        json={
            "prompt": "x",
            "images": [{"image_url": image_host + "/img.png"}],
            "response_format": "b64_json",
        },
    )
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert img.size[0] / img.size[1] == pytest.approx(2, rel=0.02)
