"""The SSRF guard on user-supplied URLs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest
from PIL import Image

from conftest import poll_result
from fluxserve.netguard import (
    UrlRefused,
    check_url,
    fetch_url,
    guarded_client,
    is_public_address,
    parse_url,
)


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


# ------------------------------------------------------------------ address policy

NON_PUBLIC = [
    "100.64.0.1", "100.100.100.200",  # shared address space, a cloud metadata address
    "192.0.0.9", "192.0.0.170", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.5",
    "192.88.99.1", "240.0.0.1", "255.255.255.255", "0.1.2.3", "0.0.0.0", "224.0.0.1",
    "239.255.255.250", "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1",
    "2001:db8::1", "3fff::1", "100::1", "5f00::1", "fec0::1",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:127.0.0.1",  # IPv4-mapped
    "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated)
    "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1",  # NAT64
    "2002:a9fe:a9fe::1", "2002:7f00:1::", "2002:a00:1::1",  # 6to4
    "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "not an address", "", "8.8.8.8.8", "1.2.3",
]  # fmt: skip
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]  # fmt: skip


@pytest.mark.parametrize("ip", NON_PUBLIC)
def test_non_global_addresses_are_not_public(ip: str) -> None:
    assert not is_public_address(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_globally_routable_unicast_addresses_are_public(ip: str) -> None:
    assert is_public_address(ip)


# ------------------------------------------------------------------ malformed URLs

MALFORMED = [
    "http://h:99999/", "http://h:0/", "http://h:-1/", "http://[::1]:99999/", "http://a.com:80:80/",
    "http://[::1/", "http://[::1]x/", "http://[1.2.3.4]/", "http://[:::1]/",
    "http://a\x00b/", "http://a.com/\r\nX-Injected: 1", "http://\x7f.com/", "http://exa mple.com/",
    "http://" + "a" * 64 + ".com/", "http://" + ("a" * 60 + ".") * 5 + "com/",
    "http://xn--zz.com/", "http://\u2000.com/", "http://ex\u00adample.com/",
    "http://\ud800.com/", "http://ok.com/\ud800",
    "http:///x", "http://:80/", "http://user@:80/", "http://a..b/", "http://.a.com/", "http://a!b.com/",
    "http://2130706433/", "http://127.1/", "http://0x7f.0.0.1/", "http://0177.0.0.1/",
    "http://[fe80::1%25eth0]/", "https://a.com/" + "a" * 9000,
    "javascript:alert(1)", "file:///etc/passwd", "//a.com/x", "", "   ",
]  # fmt: skip


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_refused_with_a_message(url: str) -> None:
    for allow_private in (True, False):  # refused by parsing alone, before any DNS
        with pytest.raises(UrlRefused) as info:
            asyncio.run(check_url(url, allow_private=allow_private, resolver=_no_dns))
        assert str(info.value)
    with pytest.raises(UrlRefused):
        asyncio.run(fetch_url(url, max_bytes=100, timeout_s=1, allow_private=True, resolver=_no_dns))


def test_well_formed_urls_parse() -> None:
    for url in ("https://example.com/a.png?x=1", "http://[2606:4700::1]:8080/", "http://b\u00fccher.de/"):
        assert parse_url(url).scheme in ("http", "https")
    assert parse_url("http://b\u00fccher.de/").raw_host == b"xn--bcher-kva.de"


# ------------------------------------------------------------------ pinned, checked connections


async def _no_dns(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"no resolution expected, got {host!r}")


class FakeDns:
    """A resolver with fixed answers per host (a list: one answer per call, the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        seen = self.calls.count(host)
        self.calls.append(host)
        options = self.answers[host]
        return options[min(seen, len(options) - 1)]


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        self.log.append(("start_tls", server_hostname))
        raise httpcore.ConnectError("recorded, not connected")

    async def aclose(self) -> None:
        pass


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where connections would go and never opens a socket."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(("connect", host, port))
        if port == 443:
            return RecordingStream(self.log)
        raise httpcore.ConnectError("recorded, not connected")


@pytest.mark.parametrize(
    "url",
    [
        "http://meta.test/latest/meta-data/",
        "http://nat64.test/",
        "http://mixed.test/",
        "http://100.64.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ],
)
def test_guarded_client_refuses_before_connecting(url: str) -> None:
    dns = FakeDns(
        {
            "meta.test": [["100.100.100.200"]],
            "nat64.test": [["64:ff9b::a9fe:a9fe"]],
            "mixed.test": [["93.184.216.34", "10.0.0.1"]],
        }
    )
    backend = RecordingBackend()

    async def go() -> None:
        async with guarded_client(False, 5, resolver=dns, network_backend=backend) as client:
            await client.get(url)

    with pytest.raises(UrlRefused, match="non-public address"):
        asyncio.run(go())
    assert backend.log == []
    with pytest.raises(UrlRefused, match="non-public address"):
        asyncio.run(check_url(url, allow_private=False, resolver=dns))


def test_connection_goes_to_the_address_that_was_checked() -> None:
    # DNS rebinding: a public answer for the check, then a private one for the connection.
    dns = FakeDns({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    backend = RecordingBackend()

    async def go() -> None:
        async with guarded_client(False, 5, resolver=dns, network_backend=backend) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://rebind.test/hook")
            assert dns.calls == ["rebind.test"]  # resolved once, for that connection
            assert backend.log == [("connect", "93.184.216.34", 80)]
            # The next connection resolves again, and that answer is checked in turn.
            with pytest.raises(UrlRefused):
                await client.get("http://rebind.test/hook")
            assert backend.log == [("connect", "93.184.216.34", 80)]

    asyncio.run(go())


def test_tls_verifies_the_url_hostname_on_the_pinned_address() -> None:
    dns = FakeDns({"pinned.test": [["93.184.216.34"]]})
    backend = RecordingBackend()

    async def go() -> None:
        async with guarded_client(False, 5, resolver=dns, network_backend=backend) as client:
            await client.get("https://pinned.test/x.png")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())
    assert backend.log == [("connect", "93.184.216.34", 443), ("start_tls", "pinned.test")]


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[dict[str, str]], dict[str, Any]]]:
    """A loopback server whose behaviour a test sets: ``/img.png``, redirects, trickles."""
    seen: list[dict[str, str]] = []
    conf: dict[str, Any] = {"trickle": None, "location": "/img.png"}
    png = _png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", conf["location"])
                self.end_headers()
            elif self.path == "/gzip":
                body = gzip.compress(b"\0" * 1_000_000)
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/trickle-body":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self._trickle(b"x" * 1000)
            elif self.path == "/trickle-headers":
                self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"X-Pad: y\r\n" * 100)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

        def _trickle(self, data: bytes) -> None:
            # One byte every 0.2 s (well inside any per-read timeout), for at most 6 s.
            end = time.monotonic() + 6
            for i in range(len(data)):
                if time.monotonic() > end:
                    break
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"{httpd.server_address[1]}", seen, conf
    httpd.shutdown()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (245, 140, 20)).save(buf, format="PNG")
    return buf.getvalue()


def test_fetch_connects_to_the_resolved_address_with_the_original_host(loopback) -> None:  # type: ignore[no-untyped-def]
    port, seen, _ = loopback
    dns = FakeDns({"pinned.test": [["127.0.0.1"]]})
    url = f"http://pinned.test:{port}/img.png"
    data = asyncio.run(fetch_url(url, max_bytes=10_000, timeout_s=5, allow_private=True, resolver=dns))
    assert data == _png()
    assert dns.calls == ["pinned.test"]
    assert seen[-1]["host"] == f"pinned.test:{port}" and seen[-1]["path"] == "/img.png"
    assert seen[-1]["accept-encoding"] == "identity"
    # Without allow_private the same answer is refused before any request reaches the server.
    before = len(seen)
    with pytest.raises(UrlRefused, match="non-public address"):
        asyncio.run(fetch_url(url, max_bytes=10_000, timeout_s=5, allow_private=False, resolver=dns))
    assert len(seen) == before


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_fetch_has_one_total_deadline(loopback, path: str) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = loopback
    start = time.monotonic()
    with pytest.raises(UrlRefused, match="took longer than 1 s"):
        asyncio.run(
            fetch_url(f"http://127.0.0.1:{port}{path}", max_bytes=10_000, timeout_s=1, allow_private=True)
        )
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "http://h:99999/", "http://[::1/", "http://2130706433/"]
)
def test_fetch_refuses_bad_redirect_targets(loopback, location: str) -> None:  # type: ignore[no-untyped-def]
    port, seen, conf = loopback
    conf["location"] = location
    with pytest.raises(UrlRefused):
        asyncio.run(
            fetch_url(f"http://127.0.0.1:{port}/redirect", max_bytes=10_000, timeout_s=5, allow_private=True)
        )
    assert [s["path"] for s in seen] == ["/redirect"]


def test_fetch_refuses_compressed_bodies(loopback) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = loopback
    with pytest.raises(UrlRefused, match="compressed"):
        asyncio.run(
            fetch_url(f"http://127.0.0.1:{port}/gzip", max_bytes=100_000, timeout_s=5, allow_private=True)
        )
