"""Fair share and overflow routing, measured on the embedded model.

**Fair share.** Starts ``fluxserve serve`` on a loopback port with two named accounts, A and B
(one key each). A submits ``--big`` BFL jobs at once, then B submits ``--small``. B's wait is
the queue time of each of its jobs (``result.timings.queue_s``) divided by the median engine
time of all jobs, so it reads as "images it waited for". Once with ``fair_share = true`` (the
default) and once with ``false`` (arrival order), on the same settings otherwise.

**Overflow.** ``flux-dev`` runs here and names a stand-in BFL upstream on loopback (the test
suite's, tests/standin_upstreams.py, answering after ``--upstream-s``). After five warm-up jobs,
``--burst`` jobs arrive at once from 8 clients; printed: the share that went upstream and the
latency (created to finished, server-side) p50/p95, with ``route = "overflow"`` and
``overflow_wait_s = --wait-s``, and with ``route = "local"``.

    python bench/fairness.py [--big 200] [--small 5] [--size 512] [--weight-b 1]
                             [--burst 40] [--wait-s 2] [--upstream-s 2] [--raw FILE]

Prints one row per run, and the raw per-job figures as JSON lines with ``--raw FILE``. Not a
test: the test suite checks the order itself (tests/test_fair_share.py, tests/test_overflow.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(data_dir: Path, env: dict[str, str], *args: str) -> str:
    """``fluxserve ARGS --data-dir DATA_DIR``; its standard output."""
    out = subprocess.run(
        [sys.executable, "-m", "fluxserve", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@contextlib.contextmanager
def server(data_dir: Path, env: dict[str, str]) -> Iterator[httpx.Client]:
    """``fluxserve serve`` on a free loopback port, ready; a client for it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxserve", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.time() + 180
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/readyz").status_code == 200:
                        break
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
            yield http
    finally:
        proc.terminate()
        proc.wait(30)


def submit(http: httpx.Client, key: str, prompt: str, size: int, seed: int) -> str:
    body = {"prompt": prompt, "width": size, "height": size, "seed": seed, "output_format": "jpeg"}
    r = http.post("/v1/flux-dev", json=body, headers={"x-key": key})
    r.raise_for_status()
    return str(r.json()["id"])


def result(http: httpx.Client, key: str, job_id: str) -> dict[str, Any]:
    """Poll until the job ended; its get_result answer."""
    while True:
        body: dict[str, Any] = http.get(
            "/v1/get_result", params={"id": job_id}, headers={"x-key": key}
        ).json()
        if body["status"] not in ("Pending", "Queued", "Running"):
            return body
        time.sleep(0.2)


def env_for(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    env.update({f"FLUXSERVE_{k.upper()}": v for k, v in settings.items()})
    return env


def run_fair(fair: bool, args: argparse.Namespace) -> dict[str, Any]:
    """A's batch, then B's few jobs; B's wait in engine-times."""
    data_dir = Path(tempfile.mkdtemp(prefix="fluxserve-fairness-"))
    env = env_for(fair_share=str(fair).lower())
    cli(data_dir, env, "accounts", "create", "A", "--max-active", "100000")
    cli(data_dir, env, "accounts", "create", "B", "--max-active", "100000", "--weight", str(args.weight_b))
    keys = {a: cli(data_dir, env, "keys", "create", "--account", a).strip() for a in ("A", "B")}
    with server(data_dir, env) as http:
        with ThreadPoolExecutor(8) as pool:
            big = list(
                pool.map(
                    lambda i: submit(http, keys["A"], f"a red circle {i}", args.size, i), range(args.big)
                )
            )
        small = [submit(http, keys["B"], f"a blue square {i}", args.size, i) for i in range(args.small)]
        rows = []
        for account, ids in (("A", big), ("B", small)):
            for job_id in ids:
                done = result(http, keys[account], job_id)["result"]
                row = {
                    "part": "fair",
                    "fair_share": fair,
                    "account": account,
                    "id": job_id,
                    **done["timings"],
                }
                rows.append({**row, "start_time": done["start_time"]})
    engine = statistics.median(r["engine_s"] for r in rows)
    b_rows = [r for r in rows if r["account"] == "B"]
    waits_b = [r["queue_s"] / engine for r in b_rows]

    def ahead(b: dict[str, Any]) -> int:  # A's jobs that started after B's was made, before it
        made = b["start_time"] - b["queue_s"]
        return sum(1 for a in rows if a["account"] == "A" and made < a["start_time"] < b["start_time"])

    return {
        "fair_share": fair,
        "engine_s_median": engine,
        "b_wait_images_first": waits_b[0],
        "b_wait_images_max": max(waits_b),
        "b_jobs_ahead_max": max(ahead(b) for b in b_rows),
        "rows": rows,
    }


def run_overflow(wait_s: float | None, args: argparse.Namespace, upstream_url: str) -> dict[str, Any]:
    """One warm-up job, then a burst from 8 clients; the upstream share and latencies."""
    route: dict[str, Any] = (
        {"route": "local"} if wait_s is None else {"route": "overflow", "overflow_wait_s": wait_s}
    )
    upstreams = {
        "standin": {
            "kind": "bfl",
            "base_url": upstream_url,
            "api_key_env": "STANDIN_BFL_KEY",
            "poll_interval_s": 0.1,
            "max_poll_interval_s": 0.5,
        }
    }
    models = {"flux-dev": {"upstream": "standin", "checkpoint": "builtin:tiny", **route}}
    env = env_for(upstreams=json.dumps(upstreams), models=json.dumps(models))
    env["STANDIN_BFL_KEY"] = "standin-bfl-key"
    data_dir = Path(tempfile.mkdtemp(prefix="fluxserve-overflow-"))
    key = cli(data_dir, env, "keys", "create").strip()
    prompt = f"a red circle [slow={args.upstream_s:g}]"
    with server(data_dir, env) as http:
        for i in range(5):  # the estimate: the median engine time of the model's jobs made here
            result(http, key, submit(http, key, prompt, args.size, 1000 + i))
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: submit(http, key, prompt, args.size, i + 1), range(args.burst)))
            ended = list(pool.map(lambda j: result(http, key, j), ids))
    rows = []
    for body in ended:
        timings = body["result"]["timings"]
        served = (body.get("details") or {}).get("served_by", "local")
        latency = timings["queue_s"] + body["result"]["duration"]
        rows.append(
            {"part": "overflow", "overflow_wait_s": wait_s, "served_by": served, "latency_s": latency}
        )
    latencies = sorted(r["latency_s"] for r in rows)
    return {
        "overflow_wait_s": wait_s,
        "upstream_share": sum(r["served_by"] != "local" for r in rows) / len(rows),
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=200, help="jobs account A submits first")
    ap.add_argument("--small", type=int, default=5, help="jobs account B submits next")
    ap.add_argument("--size", type=int, default=512, help="image side (px)")
    ap.add_argument("--weight-b", type=float, default=1.0, help="account B's weight")
    ap.add_argument("--burst", type=int, default=40, help="jobs of the overflow burst")
    ap.add_argument("--wait-s", type=float, default=2.0, help="overflow_wait_s of the overflow run")
    ap.add_argument("--upstream-s", type=float, default=2.0, help="the stand-in upstream's time per job")
    ap.add_argument("--parts", default="fair,overflow", help="fair, overflow or both (comma-separated)")
    ap.add_argument("--raw", type=Path, help="write every job's figures here (JSON lines)")
    args = ap.parse_args()
    raw: list[dict[str, Any]] = []
    parts = set(args.parts.split(","))
    if "fair" in parts:
        fair_part(args, raw)
    if "overflow" in parts:
        overflow_part(args, raw)
    if args.raw:
        args.raw.write_text("".join(json.dumps(r) + "\n" for r in raw))


def fair_part(args: argparse.Namespace, raw: list[dict[str, Any]]) -> None:
    print(
        f"Fair share: A submits {args.big} jobs, then B submits {args.small} (B's weight {args.weight_b:g}),"
    )
    print(f"embedded model, {args.size}x{args.size}; B's wait in engine-times, and the most of A's jobs")
    print("that started after one of B's was made and before it started:")
    print(f"{'fair_share':>10} {'engine p50':>10} {'B first':>8} {'B worst':>8} {'A ahead of B':>13}")
    for fair in (True, False):
        res = run_fair(fair, args)
        raw.extend(res.pop("rows"))
        print(
            f"{str(fair).lower():>10} {res['engine_s_median']:>9.3f}s "
            f"{res['b_wait_images_first']:>8.1f} {res['b_wait_images_max']:>8.1f}"
            f" {res['b_jobs_ahead_max']:>13}",
            flush=True,
        )


def overflow_part(args: argparse.Namespace, raw: list[dict[str, Any]]) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from standin_upstreams import StandinServer

    standin = StandinServer(free_port()).start()
    try:
        print(
            f"\nOverflow: {args.burst} jobs at once from 8 clients, the upstream {args.upstream_s:g} s a job"
        )
        print(f"{'route':>22} {'upstream':>9} {'p50':>7} {'p95':>7}")
        for wait_s in (args.wait_s, None):
            res = run_overflow(wait_s, args, standin.standin.base_url)
            raw.extend(res.pop("rows"))
            name = "local" if wait_s is None else f"overflow (wait {wait_s:g} s)"
            print(
                f"{name:>22} {res['upstream_share']:>8.0%} {res['p50']:>6.2f}s {res['p95']:>6.2f}s",
                flush=True,
            )
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
