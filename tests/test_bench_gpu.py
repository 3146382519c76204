"""bench/gpu.py --tiny: the GPU benchmark's whole code path on the CPU, with tiny configs.

Random-weight checkpoints (FLUX.1 dev, FLUX.2 klein) are built and saved as diffusers
directories, plain diffusers and fluxserve's engine are timed, a real ``fluxserve serve`` runs on
loopback under 8 concurrent clients, and the JSON file has the issue's fields. The other models
and modes (Kontext, schnell, the compiled ``fast``) take the same path; they are left out here to
keep the test short (compiling takes minutes on a CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# Slow: the benchmark, not the product (the engine paths it drives are tested elsewhere).
@pytest.mark.slow
def test_tiny_bench_writes_the_issue_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "gpu.py"),
        "--tiny",
        "--part",
        "engine,server",
        "--models",
        "flux1-dev,flux2-klein-4b",
        "--modes",
        "diffusers,bf16,bf16+batch4",
        "--runs",
        "2",
        "--server-model",
        "flux1-dev",
        "--server-mode",
        "bf16",
        "--requests",
        "8",
        "--workdir",
        str(tmp_path / "ckpt"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = sorted(out.glob("gpu-cpu-*-tiny.json"))
    assert len(files) == 1, list(out.iterdir())
    doc = json.loads(files[0].read_text())
    assert doc["device"] == "cpu" and doc["tiny"] is True
    assert doc["torch"] and doc["diffusers"]

    rows = {(c["model"], c["mode"]): c for c in doc["cases"]}
    assert set(rows) == {
        ("flux1-dev", "diffusers"),
        ("flux1-dev", "bf16"),
        ("flux1-dev", "bf16+batch4"),
        ("flux2-klein-4b", "diffusers"),
        ("flux2-klein-4b", "bf16"),
        ("flux2-klein-4b", "bf16+batch4"),
    }
    for (model, mode), row in rows.items():
        assert "error" not in row and "skipped" not in row, row
        assert (row["width"], row["height"], row["steps"]) == (64, 64, 2)
        assert row["seconds_median"] > 0 and row["runs"] == 2 and len(row["seconds"]) == 2
        assert "peak_mem_gib" in row and row["peak_mem_gib"] is None  # no GPU memory on the CPU
        assert row["load_s"] >= 0 and row["warmup_s"] > 0
        base = rows[(model, "diffusers")]["seconds_median"]
        assert abs(row["ratio_to_diffusers"] - row["seconds_median"] / base) < 1e-3
        if mode == "bf16":  # fluxserve's engine, every speed option off, through its Settings
            assert row["settings"]["compile"] is False and row["settings"]["fuse_qkv"] is False
            assert row["prompt_cache_hits"] == 0  # a new prompt per run: no text encoder skipped
            # fluxserve's engine with its options off draws plain diffusers' image, to rounding.
            diff = row["image_vs"]["diffusers"]
            assert diff["mean_abs"] < 1.0 and diff["psnr_db"] > 40, diff
        if mode == "bf16+batch4":  # four requests per call, timed per image; its first image
            assert row["batch_size"] == 4  # is request 0's, as alone (FLUX.2 runs them in turn)
            assert row["image_vs"]["bf16"]["mean_abs"] < 1.0, row["image_vs"]
    # The checkpoints were deleted after their last use (the server used dev's).
    assert not (tmp_path / "ckpt").exists()

    server = doc["server"]
    assert "error" not in server, server
    assert server["clients"] == 8 and server["requests"] == 8 and server["model"] == "flux1-dev"
    assert server["images_per_s"] > 0
    assert "gpu_busy" in server and server["gpu_busy"] is None  # no GPU to sample here
    assert 0 < server["engine_busy"] <= 1.05

    log = files[0].with_suffix(".log").read_text()
    assert "flux1-dev diffusers" in log and "server ready" in log
    assert (out / "server.log").is_file()
