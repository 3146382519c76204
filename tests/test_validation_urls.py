"""Bad URLs and headers are a clear 4xx in the protocol's own shape, never a 500: signed file
URLs, job paths and ``Last-Event-ID`` on the event stream, webhook and input-image URLs.

The request bodies' own fields (JSON shape and nesting, sizes, seeds, surrogates) are in
test_validation.py, whose assertions on the two protocols' error shapes are used here too. Each
case was reported as a 500 (or as accepted when it should not be); all are sent to a real server
on loopback. No case makes the server resolve a name or fetch a URL: every malformed URL is
refused before any lookup.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from test_validation import DATA_URL, assert_bfl_422, assert_openai_400

from conftest import Server, poll_result

# -- signed file URLs ---------------------------------------------------------------------------


def _raw_get(server: Server, target: str) -> tuple[int, bytes]:
    """GET with a request target too long for httpx (over 64 KiB)."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {server.host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


BAD_SIGNATURES = [
    "exp=%C2%B2&sig=%C3%A9",  # exp "²", sig "é"
    "exp=%EF%BC%91%EF%BC%92&sig=ab",  # fullwidth digits
    "exp=" + "9" * 5000 + "&sig=ab",
    "exp=99999999999&sig=%C3%A9%C3%A9",
    "exp=99999999999&sig=" + "a" * 64,
    "exp=-1&sig=ab",
    "exp=1e9&sig=ab",
    "exp=%00&sig=%00",
    "exp=&sig=",
    "sig=ab",
    "",
]


@pytest.mark.parametrize("query", BAD_SIGNATURES, ids=range(len(BAD_SIGNATURES)))
def test_bad_file_url_signatures_are_403_or_422(server: Server, query: str) -> None:
    r = httpx.get(f"{server.base_url}/v1/files/results/x/0.png?{query}", timeout=30)
    assert r.status_code in (403, 422), (r.status_code, r.text[:300])
    assert "detail" in r.json()


def test_a_100kb_signature_is_refused(server: Server) -> None:
    status, body = _raw_get(server, "/v1/files/results/x/0.png?exp=99999999999&sig=" + "a" * 100_000)
    # 422 from the route's bound on sig; uvicorn itself may refuse so long a request line (400).
    assert status in (400, 403, 414, 422), (status, body[:300])


def test_a_real_file_with_a_non_ascii_signature_is_refused(server: Server) -> None:
    r = httpx.post(
        server.base_url + "/v1/images/generations",
        json={"prompt": "x", "steps": 1, "size": "256x256"},
        timeout=60,
    )
    url = httpx.URL(r.json()["data"][0]["url"])
    assert httpx.get(url).status_code == 200
    for sig in ("é" * 64, "²", url.params["sig"][:-1] + "é"):
        r = httpx.get(url.copy_merge_params({"sig": sig}))
        assert r.status_code == 403 and "detail" in r.json(), r.text


# -- Last-Event-ID ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ended_job(server: Server) -> str:
    r = httpx.post(
        server.base_url + "/v1/flux-dev",
        json={"prompt": "x", "steps": 1, "width": 256, "height": 256},
        timeout=30,
    )
    job_id: str = r.json()["id"]
    assert poll_result(server.base_url, job_id)["status"] == "Ready"
    return job_id


@pytest.mark.parametrize(
    "last_event_id",
    [
        b"\xb2",  # "²" (headers are Latin-1): isdigit() is true, int() fails
        b"\xb9\xb2",
        "١٢".encode(),  # Arabic-Indic digits, as UTF-8 bytes
        "１２".encode(),
        b"9" * 5000,
        b"99999999999999999999",
        b"garbage",
        b"-5",
        b"1e3",
        b"0x1f",
    ],
    ids=range(10),
)
def test_malformed_last_event_id_replays_from_the_start(
    server: Server, ended_job: str, last_event_id: bytes
) -> None:
    url = f"{server.base_url}/v1/jobs/{ended_job}/events"
    deadline = time.monotonic() + 20  # the job has ended: its stream is short, never a wait
    text = ""
    with httpx.stream("GET", url, headers={"Last-Event-ID": last_event_id}, timeout=20) as r:
        assert r.status_code == 200, (r.status_code, r.read()[:300])
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_text():
            text += chunk
            if "id: end" in text or time.monotonic() > deadline:
                break
    assert "event: result" in text and "id: end" in text, text[:500]


def test_last_event_id_end_is_204_and_over_long_job_ids_are_422(server: Server, ended_job: str) -> None:
    r = httpx.get(f"{server.base_url}/v1/jobs/{ended_job}/events", headers={"Last-Event-ID": "end"})
    assert r.status_code == 204
    long_id = "a" * 101
    for method, path in [
        ("GET", f"/v1/jobs/{long_id}/events"),
        ("GET", f"/v1/jobs/{long_id}/webhooks"),
        ("DELETE", f"/v1/jobs/{long_id}"),
        ("POST", f"/v1/jobs/{long_id}/cancel"),
    ]:
        r = httpx.request(method, server.base_url + path)
        assert_bfl_422(r, "job_id")


# -- malformed URLs: webhooks and input images ----------------------------------------------------

BAD_URLS = [
    "http://h:99999/",
    "http://h:0/",
    "http://h:-1/",
    "http://[::1/",
    "http://[::1]:99999/",
    "http://[zz::1]/",
    "http://ex\x00ample.com/",
    "http://exa\nmple.com/",
    "http://exa\tmple.com/",
    "http://" + "a" * 64 + ".example.com/",  # a label over 63 characters
    "http://" + ".".join(["a" * 63] * 5) + "/",  # a host over 253 characters
    "http://a..b/",
    "http://%zz/",
    "http://:80/",
]


@pytest.mark.parametrize("url", BAD_URLS, ids=range(len(BAD_URLS)))
def test_malformed_webhook_and_image_urls_are_refused_before_any_lookup(server: Server, url: str) -> None:
    for model in ("flux-kontext-pro", "flux-pro-1.1"):
        r = httpx.post(f"{server.base_url}/v1/{model}", json={"prompt": "x", "webhook_url": url}, timeout=30)
        assert_bfl_422(r, "webhook_url")
    r = httpx.post(
        f"{server.base_url}/v1/flux-kontext-pro", json={"prompt": "x", "input_image": url}, timeout=30
    )
    assert_bfl_422(r, "input_image")
    r = httpx.post(
        server.base_url + "/v1/images/edits",
        json={"prompt": "x", "images": [{"image_url": DATA_URL}, {"image_url": url}]},
        timeout=30,
    )
    assert_openai_400(r, "images[1]")
