"""Webhooks, live progress with previews, cancellation and idempotent submission."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from PIL import Image

from conftest import poll_result
from fluxserve.jobs.webhooks import SIGNATURE_HEADER, verify


class Receiver:
    """A local webhook receiver that fails its first ``fail`` deliveries with HTTP 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = 500 if len(outer.calls) <= outer.fail else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.calls) >= n, f"got {len(self.calls)} webhook calls, wanted {n}"


def test_webhook_signed_retried_and_listed(make_server) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver(fail=2)
    srv = make_server(allow_private_urls="1", webhook_retry_base_s="0.3")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "a red circle", "seed": 1, "webhook_url": rx.url, "webhook_secret": "s3cret"},
    )
    job_id = r.json()["id"]
    rx.wait_for(3)
    for headers, body in rx.calls:
        assert verify("s3cret", headers[SIGNATURE_HEADER.lower()], body)
        assert not verify("wrong", headers[SIGNATURE_HEADER.lower()], body)
        assert not verify("s3cret", headers[SIGNATURE_HEADER.lower()], body + b" ")
    payload = json.loads(rx.calls[-1][1])
    assert payload["id"] == job_id and payload["status"] == "Ready"
    assert set(payload) >= {"id", "status", "result", "progress", "details"}
    assert httpx.get(payload["result"]["sample"]).status_code == 200
    listing = httpx.get(f"{srv.base_url}/v1/jobs/{job_id}/webhooks").json()
    assert listing["state"] == "delivered"
    assert [a["status_code"] for a in listing["attempts"]] == [500, 500, 200]
    assert listing["attempts"][0]["error"] == "HTTP 500"
    # Old signatures are refused (replay), by the documented timestamp rule.
    headers, body = rx.calls[-1]
    assert not verify("s3cret", headers[SIGNATURE_HEADER.lower()], body, now=time.time() + 3600)


def test_webhook_survives_a_restart_between_attempts(make_server) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver(fail=1)
    srv = make_server(allow_private_urls="1", webhook_retry_base_s="3")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": "a blue star", "seed": 2, "webhook_url": rx.url, "webhook_secret": "k"},
    )
    job_id = r.json()["id"]
    rx.wait_for(1)
    time.sleep(0.3)
    srv.kill()  # before the retry is due
    assert len(rx.calls) == 1
    srv.start()
    rx.wait_for(2, timeout=30)
    listing = httpx.get(f"{srv.base_url}/v1/jobs/{job_id}/webhooks").json()
    assert listing["state"] == "delivered" and len(listing["attempts"]) == 2
    assert json.loads(rx.calls[-1][1])["status"] == "Ready"


def test_webhook_urls_get_the_ssrf_rules(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        f"{server.base_url}/v1/flux-kontext-pro",
        json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook_url"]


def _read_sse(resp: httpx.Response) -> list[tuple[str | None, str, dict]]:  # type: ignore[type-arg]
    events, event_id, name, data = [], None, "message", ""
    for line in resp.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event_id, name, json.loads(data)))
            event_id, name, data = None, "message", ""
    return events


def test_sse_progress_previews_and_one_terminal_event(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    blocker = httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "a", "steps": 10, "seed": 1})
    job = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "b", "steps": 20, "seed": 2}
    ).json()
    with httpx.stream("GET", f"{srv.base_url}/v1/jobs/{job['id']}/events", timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = _read_sse(resp)
    names = [e[1] for e in events]
    assert names[0] == "queued" and events[0][2]["position"] in (0, 1)
    assert names.count("result") == 1 and names[-1] == "result"
    assert events[-1][0] == "end" and events[-1][2]["status"] == "Ready"
    fractions = [e[2]["fraction"] for e in events if e[1] == "progress"]
    assert len(fractions) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    previews = [e[2] for e in events if e[1] == "preview"]
    assert previews
    img = Image.open(io.BytesIO(base64.b64decode(previews[0]["image"])))
    assert img.format == "JPEG" and max(img.size) <= 256
    assert poll_result(srv.base_url, blocker.json()["id"])["status"] == "Ready"
    # Resume: after a progress id only later events come, and the terminal one once.
    mid = next(e[0] for e in events if e[1] == "progress")
    with httpx.stream(
        "GET", f"{srv.base_url}/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(mid)}
    ) as resp:
        again = _read_sse(resp)
    assert [e[1] for e in again].count("result") == 1
    assert all(int(e[0]) > int(mid) for e in again if e[1] in ("progress", "preview"))
    r = httpx.get(f"{srv.base_url}/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "end"})
    assert r.status_code == 204


def test_openai_stream_with_partial_images(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x")
    stream = client.images.generate(
        prompt="a green ring",
        stream=True,
        partial_images=2,
        size="512x512",
        extra_body={"steps": 12, "seed": 4},
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert final.size == (512, 512)
    partial = Image.open(io.BytesIO(base64.b64decode(events[0].b64_json)))
    assert partial.size == (512, 512)
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (30, 60, 220)).save(buf, format="PNG")
    edit = client.images.edit(
        image=("a.png", buf.getvalue(), "image/png"),
        prompt="make it red",
        stream=True,
        partial_images=1,
        extra_body={"steps": 6, "seed": 1},
    )
    assert [e.type for e in edit] == ["image_edit.partial_image", "image_edit.completed"]


def test_cancel_queued_and_running(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    running = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "long", "steps": 50, "seed": 1}
    ).json()["id"]
    queued = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "next", "steps": 5, "seed": 2}
    ).json()["id"]
    r = httpx.delete(f"{srv.base_url}/v1/jobs/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "Error"
    deadline = time.monotonic() + 60
    while httpx.get(f"{srv.base_url}/v1/get_result", params={"id": running}).json()["progress"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(f"{srv.base_url}/v1/jobs/{running}/cancel")
    assert r.status_code == 200
    done = poll_result(srv.base_url, running)
    assert done["status"] == "Error" and done["details"]["error"] == "cancelled"
    assert 0 < done["details"]["steps_done"] < 50
    q = poll_result(srv.base_url, queued)
    assert q["status"] == "Error" and q["details"] == {"error": "cancelled", "steps_done": 0}
    assert httpx.delete(f"{srv.base_url}/v1/jobs/{queued}").status_code == 409
    assert httpx.delete(f"{srv.base_url}/v1/jobs/nope").status_code == 404
    con = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    started = con.execute("SELECT started_at FROM jobs WHERE id = ?", (queued,)).fetchone()[0]
    con.close()
    assert started is None  # the queued job never ran


def test_sync_openai_call_cancelled_when_client_disconnects(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{srv.base_url}/v1/images/generations",
            timeout=1.0,
            json={"prompt": "slow", "n": 10, "extra_body": {"steps": 50, "seed": 3}},
        )
    con = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    deadline = time.monotonic() + 30
    while True:
        status, details = con.execute("SELECT status, details FROM jobs").fetchone()
        if status == "error" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    con.close()
    assert status == "error" and json.loads(details)["error"] == "cancelled"


def test_idempotency_key(server) -> None:  # type: ignore[no-untyped-def]
    url = f"{server.base_url}/v1/flux-kontext-pro"
    body = {"prompt": "a cyan square", "seed": 8}
    a = httpx.post(url, json=body, headers={"Idempotency-Key": "k-1"}).json()
    b = httpx.post(url, json=body, headers={"Idempotency-Key": "k-1"}).json()
    assert a["id"] == b["id"] and a["polling_url"] == b["polling_url"]
    c = httpx.post(url, json=body, headers={"Idempotency-Key": "k-2"}).json()
    assert c["id"] != a["id"]
    r = httpx.post(url, json={**body, "seed": 9}, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 422 and "Idempotency-Key" in r.text
    con = sqlite3.connect(server.data_dir / "fluxserve.sqlite3")
    n = con.execute("SELECT COUNT(*) FROM jobs WHERE id IN (?, ?)", (a["id"], c["id"])).fetchone()[0]
    total = con.execute("SELECT COUNT(*) FROM jobs WHERE spec LIKE '%a cyan square%'").fetchone()[0]
    con.close()
    assert n == 2 and total == 2  # the retry made no second job

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    kw = dict(prompt="a pink star", size="256x256", extra_headers={"Idempotency-Key": "o-1"})
    first = client.images.generate(**kw)  # type: ignore[arg-type]
    second = client.images.generate(**kw)  # type: ignore[arg-type]
    assert first.created == second.created
    assert first.data[0].url.split("?")[0] == second.data[0].url.split("?")[0]  # type: ignore[union-attr]
    with pytest.raises(openai.ConflictError):
        client.images.generate(prompt="a pink star", size="512x512", extra_headers={"Idempotency-Key": "o-1"})
