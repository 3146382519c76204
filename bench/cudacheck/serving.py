"""The server check: ``fluxserve serve`` with FLUX.1-dev and the default settings (on CUDA:
fp8 where the GPU has it, fused QKV, regional compile warmed up at 1024x1024 before ready),
the time to ``/readyz``, what the first request compiles (counted through
:mod:`cudacheck.counting_server`), and whether the same request twice gives the same bytes."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cudacheck.checks import PROMPT, Run

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_counts(path: Path, after: float) -> dict[str, float]:
    """The child's counters as written after the moment ``after`` (waits up to 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            counts: dict[str, float] = json.loads(path.read_text())
            if counts["time"] > after:
                return counts
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server's compile counters ({path}) were not written")
        time.sleep(0.1)


def check_serve(run: Run, serve: dict[str, Any], seeds: dict[str, Any], compile_setting: str | None) -> None:
    """Fill ``serve`` (ready time, compiles of the first request) and ``seeds`` (the same seed
    twice gives the same bytes) from one ``fluxserve serve`` run. ``compile_setting`` forces
    ``FLUXSERVE_COMPILE`` (``--tiny-compile``: the CPU does not compile by default); None
    keeps the default."""
    import httpx

    ckpt = run.checkpoints.path("flux1-dev")
    side = max(256, run.size)  # the API's smallest side
    data_dir = run.data_root / "serve"
    data_dir.mkdir(parents=True, exist_ok=True)
    counts_path = data_dir / "compile-counts.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}  # the defaults
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        FLUXSERVE_DEFAULT_CHECKPOINT=str(ckpt),
        FLUXSERVE_LOG_LEVEL="info",
        # One entry, so that a prompt is encoded again after another one (no effect on the bytes:
        # cached and fresh embeddings are the same; docs/models.md, Speed).
        FLUXSERVE_PROMPT_CACHE_SIZE="1",
    )
    if compile_setting is not None:
        env["FLUXSERVE_COMPILE"] = compile_setting
        env["FLUXSERVE_WARMUP_SIZES"] = f"{side}x{side}"
    settings = {
        k: v for k, v in env.items() if k.startswith("FLUXSERVE_") and k != "FLUXSERVE_DEFAULT_CHECKPOINT"
    }
    serve.update(model="flux1-dev", size=side, steps=run.quick_steps, env=settings)
    seeds.update(
        model="flux1-dev", size=side, steps=run.quick_steps, via="fluxserve serve, default speed settings"
    )
    port = free_port()
    cmd = [sys.executable, str(HERE / "counting_server.py"), str(counts_path), "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    log_path = data_dir / "server.log"
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + (600 if run.device.type == "cuda" else 240)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fluxserve serve exited with {proc.returncode}")
            try:
                r = httpx.get(base + "/readyz", timeout=5)
                if r.status_code == 200:
                    break
                if r.json().get("status") == "error":
                    raise RuntimeError(f"the server could not load the model: {r.text}")
            except (httpx.HTTPError, ValueError):  # not listening yet, or not JSON yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            time.sleep(0.25)
        serve["ready_s"] = round(time.perf_counter() - start, 2)
        at_ready = read_counts(counts_path, time.time())
        serve["compiled_at_start"] = {k: v for k, v in at_ready.items() if k != "time"}

        def image(prompt: str = PROMPT, size: int = side, steps: int = run.quick_steps) -> bytes:
            body = {"model": "flux-dev", "prompt": prompt, "size": f"{size}x{size}", "steps": steps}
            body.update(response_format="b64_json", output_format="png", seed=7)
            r = httpx.post(base + "/v1/images/generations", json=body, timeout=600)
            r.raise_for_status()
            return base64.b64decode(r.json()["data"][0]["b64_json"])

        t = time.perf_counter()
        first = image()
        serve["first_request_s"] = round(time.perf_counter() - t, 2)  # for the record; not the check
        after = read_counts(counts_path, time.time())
        new = {k: after[k] - at_ready[k] for k in ("unique_graphs", "frames_ok", "fxgraph_cache_miss")}
        serve["first_request_compiled"] = new
        serve["compiled"] = at_ready["unique_graphs"] > 0
        if serve["compiled"]:
            serve["ok"] = new["unique_graphs"] == 0 and new["frames_ok"] == 0
        else:
            serve["skipped"] = (
                "the engine compiled nothing (compile = auto is off on the CPU, compile time "
                "outweighs the gain there): time to /readyz measured, no compiled path to count; "
                "--tiny-compile forces it"
            )
        # The same request again, its prompt encoded again (another prompt evicted it from the
        # one-entry prompt cache): the whole pipeline, text encoders included, twice.
        image(prompt="a photo of a blue dog")
        again = image()
        seeds["same_bytes"] = first == again
        seeds["png_bytes"] = len(first)
        # The same request while a long job runs: the worker encodes its prompt beside that run
        # (the engine's prefetch, on a second CUDA stream on a GPU).
        with ThreadPoolExecutor(2) as pool:
            long_job = pool.submit(image, "a photo of a red dog", 1024, 28)
            time.sleep(0.1)  # queued behind it
            prefetched = pool.submit(image).result()
            long_job.result()
        end = read_counts(counts_path, time.time())
        seeds["prefetched"] = end["prefetched"] - after["prefetched"]
        seeds["prefetched_same_bytes"] = prefetched == first
        serve["all_requests_compiled"] = end["unique_graphs"] - at_ready["unique_graphs"]
        for name, other in (("again", again), ("prefetched", prefetched)):
            if other != first:
                from io import BytesIO

                from PIL import Image

                from cudacheck.report import image_difference

                seeds[f"{name}_pixels"] = image_difference(
                    Image.open(BytesIO(first)), Image.open(BytesIO(other))
                )
        seeds["ok"] = seeds["same_bytes"] and seeds["prefetched_same_bytes"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lines = log_path.read_text(errors="replace").splitlines()
        facts = [ln for ln in lines if "compile" in ln or "memory =" in ln or "quantize" in ln]
        serve["server_log"] = facts[-8:]
        if not serve.get("ok") and not serve.get("skipped"):
            serve["server_log_tail"] = lines[-20:]
