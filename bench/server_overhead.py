"""End-to-end overhead of the server over the engine's own time, for one 1024x1024 JPEG.

Starts ``fluxserve serve`` on a loopback port (default model, or FLUXSERVE_DEFAULT_CHECKPOINT),
then drives it with the official ``openai`` client (synchronous calls, b64_json) from 1 and from
16 concurrent clients. The engine's and the encoder's own time for each job come from the job
rows, so overhead = end-to-end latency - engine time, per request.

    python bench/server_overhead.py [--requests 64] [--steps 28]

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--steps", type=int, default=28)
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="fluxserve-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, FLUXSERVE_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxserve", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)

        def one(i: int) -> float:
            t = time.perf_counter()
            client.images.generate(
                model="flux-kontext-pro",
                prompt=f"a red circle {i}",
                size="1024x1024",
                response_format="b64_json",
                extra_body={"output_format": "jpeg", "seed": i, "steps": args.steps},
            )
            return time.perf_counter() - t

        one(10_000)  # warm-up
        print(
            f"{'clients':>7} {'n':>4} {'e2e p50':>9} {'e2e p99':>9} {'engine p50':>10} "
            f"{'encode p50':>10} {'overhead p50':>12} {'overhead p99':>12} {'img/s':>6}"
        )
        db = sqlite3.connect(data_dir / "fluxserve.sqlite3")
        for clients in (1, 16):
            db.execute("DELETE FROM jobs")
            db.commit()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                lat = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
            rows = [json.loads(r[0]) for r in db.execute("SELECT result FROM jobs")]
            engine = [r["engine_s"] for r in rows]
            encode = [r["encode_s"] for r in rows]
            # Per-request overhead: latency minus the median engine time (jobs are alike).
            e50 = statistics.median(engine)
            over = [x - e50 for x in lat]
            print(
                f"{clients:>7} {len(lat):>4} {pct(lat, 50) * 1e3:>7.1f}ms {pct(lat, 99) * 1e3:>7.1f}ms "
                f"{e50 * 1e3:>8.1f}ms {statistics.median(encode) * 1e3:>8.1f}ms "
                f"{pct(over, 50) * 1e3:>10.1f}ms {pct(over, 99) * 1e3:>10.1f}ms {len(lat) / wall:>6.2f}"
            )
        print(
            "overhead = end-to-end latency - engine time (it includes JPEG encoding, storage, "
            "HTTP, JSON/base64, and with 16 clients the wait in the queue behind other jobs)."
        )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
