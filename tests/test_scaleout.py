"""Scale-out through live processes on loopback: stateless API nodes (``serve --no-worker``)
and engine workers (``fluxserve worker``) sharing a real PostgreSQL (dispatch through
procrastinate, events over LISTEN/NOTIFY) and a real S3 store; and several engine workers in
one server (``serve --gpus cpu,cpu``) on SQLite. The dispatch queues at the job store are
test_scaleout_dispatch.py."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from PIL import Image

from conftest import PostgresServer, S3Server, free_port, poll_result


class Proc:
    """A ``python -m fluxserve ...`` process whose output is collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxserve", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"{self.args} exited:\n" + "".join(self.lines))
            time.sleep(0.05)
        raise TimeoutError(f"{self.args}: no {text!r} in:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ApiNode(Proc):
    def __init__(self, env: dict[str, str], data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), "--data-dir", str(data_dir), *extra], env)

    def ready(self) -> None:
        self.wait_for("fluxserve listening on")
        deadline = time.monotonic() + 120
        while httpx.get(self.base_url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.1)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def base_env(tiny_checkpoint: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXSERVE_", "AWS_"))}
    env["FLUXSERVE_DEFAULT_CHECKPOINT"] = str(tiny_checkpoint)
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    env.update({"FLUXSERVE_" + k.upper(): v for k, v in settings.items()})
    return env


def submit(base_url: str, prompt: str, model: str = "flux-dev", **fields: Any) -> str:
    small = {"width": 256, "height": 256, "steps": 2} if model == "flux-dev" else {}
    body = {"prompt": prompt, **small, **fields}
    r = httpx.post(f"{base_url}/v1/{model}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_two_engine_workers_in_one_server_share_the_queue(make_server, tiny_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    """``serve --gpus cpu,cpu``: the device list is injectable, so two engine workers run on the
    CPU, both take jobs from the one SQLite queue, and no job runs twice."""
    srv = make_server(gpus="cpu,cpu", batch_delay_s="0")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(srv.base_url, f"a red circle {i}", seed=i), range(16)))
    for job_id in ids:
        assert poll_result(srv.base_url, job_id)["status"] == "Ready"
    with sqlite3.connect(srv.data_dir / "fluxserve.sqlite3") as db:
        rows = db.execute("SELECT attempts, completions, result FROM jobs").fetchall()
    assert len(rows) == 16 and all(r[0] == 1 and r[1] == 1 for r in rows)
    workers = {json.loads(r[2])["worker"].split("@")[0] for r in rows}
    assert workers == {"cpu#0", "cpu#1"}


def sse_events(url: str, out: list[tuple[str, dict[str, Any]]], done: threading.Event) -> None:
    """Read a server-sent-event stream into ``out`` until it ends; each event's id is kept in
    its data as ``_id``."""
    try:
        with httpx.stream("GET", url, timeout=120) as r:
            event, event_id = "", ""
            for line in r.iter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    out.append((event, {**json.loads(line[6:]), "_id": event_id}))
                    event_id = ""
    finally:
        done.set()


def receive_webhooks() -> tuple[ThreadingHTTPServer, str, list[tuple[str, dict[str, Any]]]]:
    """A loopback webhook receiver recording (delivery id, body) of each POST."""
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.headers["X-Fluxserve-Delivery"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/hook", received


def serve_image() -> tuple[ThreadingHTTPServer, str, list[str]]:
    """A loopback HTTP server with one PNG, recording each fetch."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, format="PNG")
    fetches: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(buf.getvalue())))
            self.end_headers()
            self.wfile.write(buf.getvalue())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/input.png", fetches


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


def wait_until(check: Any, timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what or str(check))


# Slow (1 to 4 minutes: seven processes, 200 jobs, three worker deaths): the faster tests here, in
# test_scaleout_dispatch and in test_postgres cover dispatch, two API nodes and the reaper one at a time.
@pytest.mark.slow
def test_api_nodes_and_workers_share_postgres_and_s3(
    procs: list[Proc],
    postgres_server: PostgresServer,
    s3_server: S3Server,
    tiny_checkpoint: Path,
    slow_checkpoint: Path,
    tmp_path: Path,
) -> None:
    url = postgres_server.new_database()
    env = base_env(
        tiny_checkpoint,
        database_url=url,
        storage_url=f"s3://{s3_server.bucket}/scaleout",
        secret_key="shared-secret-for-every-node",
        batch_delay_s="0",
        stall_timeout_s="3",
        max_attempts="2",
        # flux-dev runs the tiny model; flux-kontext-max one slow enough to watch and kill.
        models=json.dumps({"flux-kontext-max": {"checkpoint": str(slow_checkpoint)}}),
        allow_private_urls="true",  # the input image below is served on loopback
        moderation_enabled="false",
    )
    env.update(s3_server.env)
    assert subprocess.run([sys.executable, "-m", "fluxserve", "db", "upgrade"], env=env).returncode == 0
    api_a, api_b = (ApiNode(env, tmp_path / name, "--no-worker") for name in ("a", "b"))
    # Two workers take every model; a third loads and takes only the slow model.
    w1, w2 = Proc(["worker"], env), Proc(["worker"], env)
    w3 = Proc(["worker", "--models", "flux-kontext-max"], env)
    procs.extend([api_a, api_b, w1, w2, w3])
    for node in (api_a, api_b):
        node.ready()
    for w in (w1, w2):
        w.wait_for("fluxserve worker ready")
    assert w3.wait_for("fluxserve worker ready").strip().endswith("take flux-kontext-max")

    # 200 jobs across both API nodes: every one completes, exactly once, on both workers.
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(
                lambda i: submit((api_a, api_b)[i % 2].base_url, f"a blue square {i}", seed=i, steps=1),
                range(200),
            )
        )
    wait_until(
        lambda: rows(url, "SELECT count(*) FROM fluxserve_jobs WHERE status = 'ready'")[0][0] == 200,
        timeout=240,
        what="200 jobs ready",
    )
    done = rows(url, "SELECT id, attempts, completions, worker FROM fluxserve_jobs")
    assert sorted(r[0] for r in done) == sorted(ids)
    assert all(r[1] == 1 and r[2] == 1 for r in done)
    # Both full workers took some; the kontext-max-only worker none.
    assert {r[3].split(":")[-1] for r in done} == {str(w1.proc.pid), str(w2.proc.pid)}

    # A webhook is sent once, by one of the two API nodes, for a job run on a worker.
    hook_server, hook_url, received = receive_webhooks()
    hooked = submit(api_b.base_url, "a black cat", seed=1, webhook_url=hook_url)
    wait_until(lambda: received, what="the webhook")
    time.sleep(2)  # both API nodes poll for due deliveries every 0.25 s: no second one comes
    hook_server.shutdown()
    assert len(received) == 1 and received[0][1]["id"] == hooked and received[0][1]["status"] == "Ready"
    assert received[0][0] == httpx.get(f"{api_a.base_url}/v1/jobs/{hooked}/webhooks").json()["delivery_id"]

    # OpenAI calls on an API node, run by a worker: a synchronous one returns when the worker
    # ends the job; a streaming one gets its partial images (too big for a NOTIFY payload).
    client = openai.OpenAI(base_url=api_a.base_url + "/v1", api_key="unused-on-loopback")
    opts = {"model": "flux-dev", "size": "512x512"}
    made = client.images.generate(prompt="a pink flower", **opts, extra_body={"steps": 2, "seed": 3})
    assert made.data and made.data[0].url and httpx.get(made.data[0].url).status_code == 200
    stream = client.images.generate(
        prompt="a grey stone", stream=True, partial_images=2, **opts, extra_body={"steps": 6, "seed": 4}
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    partial = Image.open(io.BytesIO(base64.b64decode(events[0].b64_json)))  # type: ignore[union-attr]
    assert partial.size == (512, 512)

    # A result made on a worker is in S3, and its signed URL works from either API node.
    result = poll_result(api_a.base_url, ids[1])  # submitted through B
    sample = result["result"]["sample"]
    assert sample.startswith(api_a.base_url)
    image = httpx.get(sample).content
    assert Image.open(io.BytesIO(image)).size == (256, 256)
    assert httpx.get(sample.replace(api_a.base_url, api_b.base_url)).content == image
    key = f"scaleout/results/{ids[1]}/0.jpeg"
    assert s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == image

    # A slow job submitted on A, streamed from B while it runs on a worker. Its input image is
    # fetched once, at submission, and kept with the job: the re-run below does not fetch it.
    image_server, image_url, fetches = serve_image()
    slow = {"steps": 16, "aspect_ratio": "1:1"}
    longer = {**slow, "steps": 50}  # for jobs that are stopped before they end
    workers = {str(w.proc.pid): w for w in (w1, w2, w3)}

    def worker_of(job_id: str) -> Proc:
        (name,) = rows(url, "SELECT worker FROM fluxserve_jobs WHERE id = %s", job_id)[0]
        return workers.pop(name.split(":")[-1])

    job = submit(api_a.base_url, "a green fish", "flux-kontext-max", seed=7, input_image=image_url, **slow)
    assert fetches == ["/input.png"]
    seen: list[tuple[str, dict[str, Any]]] = []
    ended = threading.Event()
    threading.Thread(
        target=sse_events, args=(f"{api_b.base_url}/v1/jobs/{job}/events", seen, ended), daemon=True
    ).start()
    wait_until(lambda: any(e == "progress" for e, _ in seen), what="progress on the other node")
    wait_until(lambda: any(e == "preview" for e, _ in seen), what="a preview on the other node")
    # SIGKILL the worker running it: after the stall timeout the other worker completes it.
    worker_of(job).stop(signal.SIGKILL)
    assert ended.wait(120), seen
    # The re-run's events carry ids above the first run's (a resumed stream misses none).
    event_ids = [int(d["_id"]) for e, d in seen if e == "progress"]
    assert event_ids == sorted(event_ids) and event_ids[0] < 1_000_000 < event_ids[-1], event_ids
    final = seen[-1]
    assert final[0] == "result" and final[1]["status"] == "Ready", final
    (attempts, completions, worker) = rows(
        url, "SELECT attempts, completions, worker FROM fluxserve_jobs WHERE id = %s", job
    )[0]
    assert (attempts, completions) == (2, 1) and worker.split(":")[-1] in workers
    assert len(fetches) == 1
    image_server.shutdown()

    # Cancel from the other node stops the worker at its next step.
    job2 = submit(api_b.base_url, "a yellow moon", model="flux-kontext-max", seed=8, **longer)
    wait_until(
        lambda: rows(url, "SELECT progress FROM fluxserve_jobs WHERE id = %s", job2)[0][0] > 0,
        what="job2 running",
    )
    r = httpx.post(f"{api_a.base_url}/v1/jobs/{job2}/cancel")
    assert r.status_code == 200, r.text
    cancelled = poll_result(api_b.base_url, job2, timeout=30)
    assert cancelled["status"] == "Error"
    steps_done = rows(url, "SELECT details FROM fluxserve_jobs WHERE id = %s", job2)[0][0]["steps_done"]
    assert steps_done < 50

    # Attempts are capped: a job whose worker dies twice (max_attempts = 2) ends as Error.
    job3 = submit(api_a.base_url, "a white cloud", model="flux-kontext-max", seed=9, **longer)
    running = "SELECT 1 FROM fluxserve_jobs WHERE id = %s AND status = 'running' AND attempts = %s"
    for attempt in (1, 2):
        wait_until(
            lambda n=attempt: rows(url, running + " AND progress > 0", job3, n), what=f"attempt {attempt}"
        )
        worker_of(job3).stop(signal.SIGKILL)
    gave_up = poll_result(api_b.base_url, job3, timeout=60)
    assert gave_up["status"] == "Error"
    (details,) = rows(url, "SELECT details FROM fluxserve_jobs WHERE id = %s", job3)[0]
    assert "2 times" in details["error"], details

    # Retention: an API node whose retention time has passed sweeps ended jobs, rows and objects.
    s3 = s3_server.client()
    assert s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"scaleout/results/{ids[1]}/")["KeyCount"] == 1
    short = {**env, "FLUXSERVE_RETENTION_S": "1", "FLUXSERVE_SWEEP_INTERVAL_S": "0.5"}
    sweeper = ApiNode(short, tmp_path / "c", "--no-worker")
    procs.append(sweeper)
    sweeper.ready()
    wait_until(lambda: not rows(url, "SELECT 1 FROM fluxserve_jobs WHERE id = %s", ids[1]), what="swept")
    assert s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"scaleout/results/{ids[1]}/")["KeyCount"] == 0
    assert httpx.get(sample).status_code == 404
    sweeper.stop()

    # Credits: a job that ends on a worker settles its hold there, so an account limited to one
    # active task can submit again (its first job's hold does not stay open).
    fresh = Proc(["worker", "--models", "flux-dev"], env)
    procs.append(fresh)
    for args in ("accounts create acme --max-active 1", "keys create --account acme"):
        made = subprocess.run(
            [sys.executable, "-m", "fluxserve", *args.split()], env=env, capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
    key = {"x-key": made.stdout.strip()}
    fresh.wait_for("fluxserve worker ready")
    for n in range(2):
        r = httpx.post(
            f"{api_a.base_url}/v1/flux-dev",
            json={"prompt": f"a paid square {n}", "width": 256, "height": 256, "steps": 1},
            headers=key,
        )
        assert r.status_code == 200, r.text
        assert poll_result(api_b.base_url, r.json()["id"], headers=key)["status"] == "Ready"


def test_worker_command_needs_postgres(tmp_path: Path, tiny_checkpoint: Path) -> None:
    env = base_env(tiny_checkpoint)
    done = subprocess.run(
        [sys.executable, "-m", "fluxserve", "worker", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "database_url" in done.stderr and "--gpus" in done.stderr
