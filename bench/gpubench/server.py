"""``fluxserve serve`` under concurrent clients, the GPU's busy share sampled from NVML."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from gpubench import REPO
from gpubench.cases import ModelCase
from gpubench.report import Report
from gpubench.runners import mode_settings
from gpubench.timing import prompt


class GpuSampler:
    """Samples the GPU's utilization at ~10 Hz in a thread: NVML's ``utilization.gpu`` (pynvml,
    from nvidia-ml-py; else ``nvidia-smi --query-gpu=utilization.gpu``), the percent of the last
    sample period (1/6 s to 1 s, by driver) in which at least one kernel ran on the GPU. Its
    limits: it says a kernel was running, not how full the GPU was (one small kernel counts as
    busy), and its window is coarser than one denoising step. torch.cuda events cannot see
    another process's kernels, so the server is measured from outside like this."""

    def __init__(self, index: int = 0, hz: float = 10.0) -> None:
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._interval = 1.0 / hz
        self._read: Callable[[], float] | None = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "nvml utilization.gpu at 10 Hz"
        except Exception:
            if shutil.which("nvidia-smi"):
                cmd = [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                ]
                self._read = lambda: float(
                    subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                )
                self.source = "nvidia-smi utilization.gpu (~10 Hz at best)"
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set() and self._read is not None:
            try:
                self.samples.append(self._read())
            except Exception:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def busy(self) -> float | None:
        """Mean utilization over the samples, 0..1 (None without a GPU to read)."""
        return statistics.fmean(self.samples) / 100 if self.samples else None


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(
    report: Report,
    case: ModelCase,
    ckpt: Path,
    device: torch.device,
    mode: str,
    size: tuple[int, int],
    clients: int,
    requests: int,
    out_dir: Path,
    data_dir: Path,
    timeout_s: float,
    compile_cache: Path | None = None,
) -> dict[str, Any]:
    """``fluxserve serve`` on loopback with ``ckpt`` in ``mode``, driven by ``clients`` threads
    of synchronous OpenAI Images calls (httpx, b64_json) until ``requests`` images are made."""
    import httpx

    model = case.name
    values, _ = mode_settings(mode, device, ckpt, data_dir, size, compile_cache)
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        FLUXSERVE_DEFAULT_CHECKPOINT=str(ckpt),
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_DEVICE=device.type,
        FLUXSERVE_FUSE_QKV=str(values["fuse_qkv"]).lower(),
        FLUXSERVE_COMPILE=str(values["compile"]).lower(),
        FLUXSERVE_CHANNELS_LAST=str(values["channels_last"]).lower(),
        FLUXSERVE_QUANTIZE=values["quantize"],
        FLUXSERVE_CACHE=values["cache"],
    )
    if values.get("warmup_sizes"):
        env["FLUXSERVE_WARMUP_SIZES"] = ",".join(values["warmup_sizes"])
    if values.get("compile_cache_dir"):
        env["FLUXSERVE_COMPILE_CACHE_DIR"] = values["compile_cache_dir"]
    log_file = (out_dir / "server.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "fluxserve",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO))
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {
        "model": model,
        "mode": mode,
        "checkpoint": "random weights, " + model,
        "width": size[0],
        "height": size[1],
        "steps": case.steps,
        "clients": clients,
        "requests": requests,
        "api": "OpenAI Images (POST /v1/images/generations, b64_json, jpeg), httpx",
        "images_per_s": None,
        "gpu_busy": None,
        "quantize": values["quantize"],
    }
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fluxserve serve exited with {proc.returncode} (see server.log)")
            try:
                r = httpx.get(base + "/readyz", timeout=5)
                if r.status_code == 200:
                    break
                if r.json().get("status") == "error":
                    raise RuntimeError(f"the server could not load the model: {r.text}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            time.sleep(0.5)
        result["ready_s"] = round(time.perf_counter() - t_start, 2)
        report.log(f"server ready in {result['ready_s']} s (start + load)")
        http = httpx.Client(base_url=base, timeout=timeout_s)

        def one(i: int) -> float:
            t = time.perf_counter()
            r = http.post(
                "/v1/images/generations",
                json={
                    "model": "flux-dev",
                    "prompt": prompt(i),
                    "size": f"{size[0]}x{size[1]}",
                    "response_format": "b64_json",
                    "output_format": "jpeg",
                    "steps": case.steps,
                    "seed": i,
                },
            )
            r.raise_for_status()
            if not r.json()["data"][0].get("b64_json"):
                raise RuntimeError(f"no image in the answer: {r.text[:200]}")
            return time.perf_counter() - t

        t = time.perf_counter()
        for i in range(2):  # compile warm-up (the first request of a size) happens here
            one(100_000 + i)
        result["warmup_s"] = round(time.perf_counter() - t, 2)
        report.log(f"server warm-up (2 requests, compile included) {result['warmup_s']} s")
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
        result["wall_s"] = round(wall, 3)
        result["images_per_s"] = round(requests / wall, 4)
        result["latency_p50_s"] = round(statistics.median(latencies), 4)
        result["latency_max_s"] = round(max(latencies), 4)
        result["gpu_busy"] = None if gpu.busy is None else round(gpu.busy, 4)
        result["gpu_busy_source"] = gpu.source if gpu.samples else "none: no GPU to sample"
        result["gpu_busy_samples"] = len(gpu.samples)
        result["engine_busy"] = engine_busy(data_dir, requests, wall)
        http.close()
    except Exception as exc:
        result["error"] = f"{exc.__class__.__name__}: {exc}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
    return result


def engine_busy(data_dir: Path, requests: int, wall: float) -> float | None:
    """Sum of the engine times the server recorded for the measured jobs (the last ``requests``
    rows of its SQLite job table) over the wall time: the share of time a job was in the engine
    (the GPU may idle within it: text encoding on the host, the VAE's PIL conversion)."""
    import sqlite3

    try:
        db = sqlite3.connect(data_dir / "fluxserve.sqlite3")
        rows = [json.loads(r[0]) for r in db.execute("SELECT result FROM jobs ORDER BY rowid") if r[0]]
        db.close()
        engine = [float(r["engine_s"]) for r in rows[-requests:] if "engine_s" in r]
        return round(sum(engine) / wall, 4) if len(engine) == requests else None
    except Exception:
        return None
