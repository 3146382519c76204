"""bench/cuda_check.py --tiny: every check of the CUDA check (issue 29) runs on the CPU at tiny
size through fluxserve's engine and server, and writes its row; ``--budget-s`` skips and
records what no longer fits. The CUDA-only parts (memory caps, fp8, the compiled server on
its default settings) are recorded as what the CPU could not do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "cuda_check.py"
CHECKS = [
    "memory-24gib",
    "memory-12gib",
    "fp8-vs-bf16",
    "loras",
    "kontext",
    "seed-determinism",
    "serve-compiled",
    "klein",
]


def run_check(
    out: Path, *args: str, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    files = sorted(out.glob("cuda-cpu-*-tiny.json"))
    assert len(files) == 1, (list(out.iterdir()), proc.stdout[-3000:], proc.stderr[-3000:])
    assert files[0].with_suffix(".log").is_file()
    return proc, json.loads(files[0].read_text())


def test_every_check_runs_at_tiny_size(tmp_path: Path) -> None:
    proc, doc = run_check(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert doc["device"] == "cpu" and doc["tiny"] is True and doc["torch"] and doc["diffusers"]
    rows = {r["check"]: r for r in doc["checks"]}
    assert list(rows) == CHECKS
    for name, row in rows.items():
        assert "error" not in row and "running" not in row, row
        if name == "serve-compiled":  # the CPU does not compile by default: said so, not faked
            assert row["ok"] is False and "compile" in row["skipped"] and row["compiled"] is False
            assert row["ready_s"] > 0 and row["first_request_compiled"]["unique_graphs"] == 0
        else:
            assert row["ok"] is True and "skipped" not in row, row
        assert row["check_s"] > 0

    # The memory plan is the engine's own for full-size FLUX.1-dev on such a card (fp8 with
    # quantize = "auto" on an Ada card): all on the GPU at 24 GiB, streamed groups at 12 GiB.
    assert rows["memory-24gib"]["plan"]["mode"] == "gpu"
    assert rows["memory-24gib"]["plan"]["components_gib"]["transformer"] == pytest.approx(11.08, abs=0.05)
    assert rows["memory-12gib"]["plan"]["mode"] == "group_offload"
    assert rows["memory-24gib"]["plan"]["without_fp8"] == "group_offload"
    assert "host memory" in rows["memory-24gib"]["cpu_limits"]
    assert rows["memory-24gib"]["seconds_per_image"] > 0

    fp8 = rows["fp8-vs-bf16"]
    assert fp8["fp8"]["quantize_chosen"] == "none" and "fp8 needs CUDA" in fp8["cpu_limits"]
    assert fp8["image_vs_bf16"]["mean_abs"] == 0.0  # nothing quantized on the CPU: the same image
    assert fp8["bf16"]["repeat_identical"] and fp8["fp8"]["repeat_identical"]

    loras = rows["loras"]
    assert loras["equal_to_alone"] == {"none": True, "ink": True, "chalk": True}
    assert loras["lora_changes_image"] == {"ink": True, "chalk": True}

    for part in ("two_images", "masked"):
        assert rows["kontext"][part]["image_size"] == [64, 64] and rows["kontext"][part]["pixel_std"] > 0
    assert rows["klein"]["image_size"] == [64, 64]
    seeds = rows["seed-determinism"]
    assert seeds["same_bytes"] is True  # twice in a row, the prompt encoded again
    assert seeds["prefetched"] >= 1 and seeds["prefetched_same_bytes"] is True  # encoded ahead


def test_a_budget_records_what_no_longer_fits(tmp_path: Path) -> None:
    proc, doc = run_check(tmp_path / "out", "--budget-s", "1", "--checks", "memory-24gib,klein", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in doc["checks"]}
    assert list(rows) == ["memory-24gib", "klein"]
    for row in rows.values():
        assert row["ok"] is False and row["skipped"].startswith("budget: about"), row
    assert doc["budget_s"] == 1


# Slow: torch.compile on a 2-core CPU takes a minute or more.
@pytest.mark.slow
def test_the_compiled_server_compiles_nothing_on_the_first_request(tmp_path: Path) -> None:
    proc, doc = run_check(
        tmp_path / "out", "--tiny-compile", "--checks", "serve-compiled,seed-determinism", timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = {r["check"]: r for r in doc["checks"]}
    serve = rows["serve-compiled"]
    assert serve["ok"] is True and serve["compiled"] is True, serve
    assert serve["compiled_at_start"]["unique_graphs"] > 0
    assert serve["first_request_compiled"] == {"unique_graphs": 0, "frames_ok": 0, "fxgraph_cache_miss": 0}
    assert rows["seed-determinism"]["same_bytes"] is True
