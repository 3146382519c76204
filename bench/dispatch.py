"""Scale-out figures with PostgreSQL: how many jobs/s one API node accepts, and dispatch latency
(submit -> a worker starts the job) through procrastinate.

Starts a PostgreSQL on a loopback port (or uses ``--database-url``), applies the schema with
``fluxserve db upgrade``, starts one stateless API node (``fluxserve serve --no-worker``), and:

1. accept: ``--jobs`` BFL submissions from ``--concurrency`` clients, no worker running
   (what the API node and the database take in; the engine plays no part);
2. drain: one stub engine worker (this file, ``--stub-worker``: a fixed image, no model) empties
   that backlog (end-to-end throughput of dispatch + storing results);
3. latency: with the worker idle, ``--latency-jobs`` submissions one at a time, ``--gap-ms``
   apart; dispatch latency = the job row's ``started_at - created_at``.

    python bench/dispatch.py [--jobs 1000] [--concurrency 32] [--latency-jobs 200]

Prints the figures; not a test. The stub engine is for this bench only.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def start_postgres() -> tuple[str, Any]:
    """initdb + pg_ctl on a loopback port in a temporary directory (as ``postgres`` if root)."""
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="fluxserve-bench-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "fluxserve", "--auth=trust"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c max_connections=200"
    pg_ctl = str(bin_dir / "pg_ctl")
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip

    def stop() -> None:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://fluxserve@127.0.0.1:{port}/postgres", stop


def stub_worker() -> None:
    """``--stub-worker``: one engine worker whose engine returns a fixed image at once."""
    from PIL import Image

    from fluxserve.backends import open_backends
    from fluxserve.catalog import ModelCatalog
    from fluxserve.engines import EngineRequest
    from fluxserve.jobs import JobService
    from fluxserve.jobs.fleet import EngineWorkers
    from fluxserve.settings import Settings

    class FixedImageEngine:
        def load(self, checkpoint: str) -> None:
            pass

        def generate(self, request: EngineRequest, on_step: Any = None, *args: Any, **kw: Any) -> list[Any]:
            if on_step is not None:
                on_step(request.steps, request.steps)
            return [Image.new("RGB", (request.width, request.height), (90, 120, 200))] * request.num_images

    async def main() -> None:
        settings = Settings.load()
        backends = open_backends(settings)
        assert backends.dispatch is not None
        service = JobService(
            backends.jobs, backends.queue, backends.webhooks, backends.storage, bus=backends.bus
        )
        service.events.bind(asyncio.get_running_loop())
        catalog = ModelCatalog.from_settings(settings)
        workers = EngineWorkers(service, catalog, [("stub#0", FixedImageEngine())], backends.dispatch)
        await workers.load()
        events = asyncio.create_task(service.events.run())
        print("stub worker ready", flush=True)
        try:
            await workers.run()
        finally:
            events.cancel()

    asyncio.run(main())


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


async def submit_all(base: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """Submit ``n`` jobs from ``concurrency`` clients; (seconds, per-request latencies)."""
    latencies: list[float] = []
    counter = iter(range(n))
    body = {"width": 256, "height": 256, "steps": 1}
    async with httpx.AsyncClient(
        base_url=base, timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as c:

        async def client() -> None:
            for i in counter:
                t = time.perf_counter()
                r = await c.post("/v1/flux-dev", json={"prompt": f"a red circle {i}", "seed": i, **body})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency-jobs", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--stub-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub_worker:
        stub_worker()
        return

    stop_pg = None
    url = args.database_url
    if url is None:
        url, stop_pg = start_postgres()
    data_dir = Path(tempfile.mkdtemp(prefix="fluxserve-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        FLUXSERVE_DATABASE_URL=url,
        FLUXSERVE_DATA_DIR=str(data_dir),
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_BATCH_DELAY_S="0",
        FLUXSERVE_MAX_QUEUED_JOBS=str(args.jobs + 100),
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        subprocess.run([sys.executable, "-m", "fluxserve", "db", "upgrade"], env=env, check=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = subprocess.Popen(
            [sys.executable, "-m", "fluxserve", "serve", "--no-worker", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(api)
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and api.poll() is None, "the API node did not start"
            time.sleep(0.2)

        print(f"# fluxserve dispatch bench  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"# {os.cpu_count()} CPUs (load average {load}), Python {platform.python_version()}")
        print("# PostgreSQL on loopback; API node, stub worker and clients share the machine")
        secs, lat = asyncio.run(submit_all(base, args.jobs, args.concurrency))
        print(
            f"accept: {args.jobs} BFL submissions from {args.concurrency} clients to one API node, no worker"
        )
        print(f"  {args.jobs / secs:.1f} jobs/s accepted; request latency p50 {pct(lat, 50) * 1000:.1f} ms,"
              f" p99 {pct(lat, 99) * 1000:.1f} ms")  # fmt: skip

        worker = subprocess.Popen(
            [sys.executable, __file__, "--stub-worker"], env=env, stdout=subprocess.PIPE, text=True
        )
        procs.append(worker)
        assert worker.stdout is not None
        worker.stdout.readline()  # ready
        t0 = time.perf_counter()
        while rows(url, "SELECT count(*) FROM fluxserve_jobs WHERE status <> 'ready'")[0][0]:
            time.sleep(0.05)
        drained = time.perf_counter() - t0
        print(f"drain: one stub engine worker ran the {args.jobs} queued jobs in {drained:.1f} s"
              f" ({args.jobs / drained:.1f} jobs/s: claim, fixed image, JPEG, store, finish)")  # fmt: skip

        before = {r[0] for r in rows(url, "SELECT id FROM fluxserve_jobs")}
        with httpx.Client(base_url=base, timeout=30) as c:
            for i in range(args.latency_jobs):
                c.post(
                    "/v1/flux-dev",
                    json={"prompt": f"a blue square {i}", "width": 256, "height": 256, "steps": 1},
                )
                time.sleep(args.gap_ms / 1000)
        while rows(url, "SELECT count(*) FROM fluxserve_jobs WHERE status <> 'ready'")[0][0]:
            time.sleep(0.05)
        waits = [
            (started - created) * 1000
            for job_id, created, started in rows(url, "SELECT id, created_at, started_at FROM fluxserve_jobs")
            if job_id not in before
        ]
        print(
            f"latency: {len(waits)} jobs submitted one at a time, {args.gap_ms:g} ms apart, one idle worker"
        )
        print(f"  dispatch (submit -> worker starts it): p50 {statistics.median(waits):.1f} ms,"
              f" p99 {pct(waits, 99):.1f} ms, max {max(waits):.1f} ms")  # fmt: skip
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if stop_pg is not None:
            stop_pg()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
