"""Defects found by trying the server as an attacker and a careless client would (on loopback):
jobs owned by keys, auth that fails closed, a worker that survives its store, capacity control,
capped crash re-runs, webhook delivery ids."""

from __future__ import annotations

import resource
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai

from conftest import Server, poll_result, run_cli


def fluxserve_cli(srv: Server, *args: str) -> str:
    """``fluxserve ARGS --data-dir <server's>`` (in this process: :func:`conftest.run_cli`); its stdout."""
    done = run_cli(srv.env, *args, "--data-dir", str(srv.data_dir))
    done.check_returncode()
    return done.stdout.strip()


def submit(srv: Server, key: str | None = None, **body: Any) -> str:
    """A BFL submission; the job id."""
    headers = {"x-key": key} if key else {}
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "a red circle", **body}, headers=headers
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def status(srv: Server, job_id: str, key: str | None = None) -> dict[str, Any]:
    """get_result's answer."""
    headers = {"x-key": key} if key else {}
    r = httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job_id}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_jobs_belong_to_the_key_that_made_them(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False, allow_private_urls="1")
    key_a, key_b = fluxserve_cli(srv, "keys", "create", "--name", "a"), fluxserve_cli(srv, "keys", "create")
    srv.start()
    job = submit(srv, key_a, seed=1, webhook_url="http://127.0.0.1:9/hook?token=secret-of-a")
    assert poll_result(srv.base_url, job, headers={"x-key": key_a})["status"] == "Ready"
    b = {"x-key": key_b}
    # B learns nothing about A's job: not its result, prompt, events, webhook URL ...
    assert status(srv, job, key_b) == {
        "id": job,
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
    for path in (f"/v1/jobs/{job}/events", f"/v1/jobs/{job}/webhooks"):
        r = httpx.get(srv.base_url + path, headers=b)
        assert r.status_code == 404 and "secret-of-a" not in r.text
    # ... and cannot cancel it (a queued one of A's stays queued and then runs).
    slow = submit(srv, key_a, seed=2, steps=20)
    assert httpx.delete(f"{srv.base_url}/v1/jobs/{slow}", headers=b).status_code == 404
    assert httpx.post(f"{srv.base_url}/v1/jobs/{slow}/cancel", headers=b).status_code == 404
    assert poll_result(srv.base_url, slow, headers={"x-key": key_a})["status"] == "Ready"
    # The owner sees everything.
    r = httpx.get(f"{srv.base_url}/v1/jobs/{job}/webhooks", headers={"x-key": key_a})
    assert r.status_code == 200 and "secret-of-a" in r.json()["url"]


def test_jobs_made_without_keys_stay_out_of_keyed_requests(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    job = submit(srv, seed=1)
    assert poll_result(srv.base_url, job)["status"] == "Ready"
    srv.stop()
    key = fluxserve_cli(srv, "keys", "create")
    srv.start()
    assert status(srv, job, key)["status"] == "Task not found"


class AnyAddressServer(Server):
    """A server bound to 0.0.0.0 (all addresses), reached over loopback only."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_auth_fails_closed_when_the_last_key_is_revoked(make_server) -> None:  # type: ignore[no-untyped-def]
    base = make_server(start=False)
    key = fluxserve_cli(base, "keys", "create")
    key_id = key[4:12]
    srv = AnyAddressServer(data_dir=base.data_dir, env=base.env, host="0.0.0.0")
    srv.start()
    try:
        assert status(srv, "x", key)["status"] == "Task not found"
        fluxserve_cli(srv, "keys", "revoke", key_id)
        time.sleep(1.2)  # the active-key check is cached for a second
        for headers in ({}, {"x-key": key}, {"x-key": "fsk_anything"}):
            r = httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401, r.text
            # A revoked key is told so; the rest learn that the server has no active key.
            assert ("was revoked" if headers.get("x-key") == key else "no active API key") in r.json()[
                "detail"
            ]
        r = httpx.get(f"{srv.base_url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    finally:
        srv.stop()


def wait_until(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def test_worker_survives_a_full_disk_and_resumes_without_restart(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    assert srv.proc is not None
    jobs = [submit(srv, seed=i, steps=12) for i in range(3)]
    wait_until(lambda: status(srv, jobs[0])["progress"] > 0, what="the first job to start")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A full disk, as the server sees one: every write past the first byte of a file fails.
    resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        r = wait_until(
            lambda: (r := httpx.get(f"{srv.base_url}/readyz")).status_code == 503 and r,
            what="/readyz to report the failing store",
        )
        assert r.json()["status"] == "degraded" and "job store" in r.json()["error"]
        # New work is refused plainly (not a 500), and nothing is lost.
        r = httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "x"})
        assert r.status_code == 503 and "storage" in r.json()["detail"]
        assert srv.proc.poll() is None
    finally:
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
    ended = [poll_result(srv.base_url, j, timeout=120) for j in jobs]
    assert all(e["status"] in ("Ready", "Error") for e in ended)
    assert ended[-1]["status"] == "Ready"  # queued while the disk was full, run once it was not
    wait_until(lambda: httpx.get(f"{srv.base_url}/readyz").status_code == 200, what="ready again")
    assert poll_result(srv.base_url, submit(srv, seed=9))["status"] == "Ready"


def test_queue_is_bounded_in_both_protocols(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server(max_queued_jobs="2")
    answers = [
        httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "x", "steps": 20}) for _ in range(5)
    ]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.status_code in (200, 429) for a in answers)
    assert "queue is full" in refused[0].json()["detail"] and int(refused[0].headers["retry-after"]) > 0
    r = httpx.post(f"{srv.base_url}/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"


def test_a_synchronous_openai_call_overtakes_a_bfl_backlog(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server()
    backlog = [submit(srv, seed=i, steps=15) for i in range(4)]
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", timeout=120)
    resp = client.images.generate(model="flux-kontext-pro", prompt="a blue star", extra_body={"steps": 2})
    assert resp.data[0].url
    pending = [j for j in backlog if status(srv, j)["status"] == "Pending"]
    assert len(pending) >= 2, "the OpenAI call waited behind the BFL backlog"


def test_a_job_that_keeps_crashing_the_server_ends_as_error(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server(max_attempts="1")
    job = submit(srv, seed=1, steps=30)
    wait_until(lambda: status(srv, job)["progress"] > 0, what="the job to start")
    srv.kill()
    srv.start()
    result = poll_result(srv.base_url, job)
    assert result["status"] == "Error" and "not tried again" in result["details"]["error"]


class FlakyReceiver:
    """Answers 500 to the first ``fail`` webhook deliveries, then 200."""

    def __init__(self, fail: int) -> None:
        self.calls: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(500 if len(outer.calls) <= fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


def test_every_attempt_of_a_delivery_carries_one_delivery_id(make_server) -> None:  # type: ignore[no-untyped-def]
    rx = FlakyReceiver(fail=2)
    srv = make_server(allow_private_urls="1", webhook_retry_base_s="0.2")
    job = submit(srv, seed=1, webhook_url=rx.url)
    wait_until(lambda: len(rx.calls) >= 3, what="three deliveries")
    ids = {c.get("x-fluxserve-delivery") for c in rx.calls}
    listed = httpx.get(f"{srv.base_url}/v1/jobs/{job}/webhooks").json()
    assert len(ids) == 1 and None not in ids and ids == {listed["delivery_id"]}
    assert listed["state"] == "delivered" and [a["status_code"] for a in listed["attempts"]] == [
        500,
        500,
        200,
    ]
    other = submit(srv, seed=2, webhook_url=rx.url)
    wait_until(lambda: len(rx.calls) >= 4, what="the second job's delivery")
    assert rx.calls[-1]["x-fluxserve-delivery"] != listed["delivery_id"]
    assert httpx.get(f"{srv.base_url}/v1/jobs/{other}/webhooks").json()["state"] == "delivered"
