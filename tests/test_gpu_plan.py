"""bench/gpu.py --plan first (issue 28): the one-command GPU plan, proven on the CPU with --tiny.

The plan builds dev once, times plain diffusers, fluxserve's ``fast``, schnell ``fast`` over
dev's files and a short server run; each step is estimated before anything starts, skipped
(and recorded as skipped) when its estimate no longer fits ``--budget-s``, and written to the
JSON the moment it is measured. The whole plan compiles three times (minutes on a 2-core CPU),
so the end-to-end run is marked slow; the budget and cut-off tests stop before the compiles.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = [
    "build flux1-dev",
    "flux1-dev diffusers",
    "flux1-dev fast",
    "flux1-schnell fast",
    "server flux1-schnell fast",
]


def plan_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "bench" / "gpu.py"),
        "--plan",
        "first",
        "--tiny",
        "--workdir",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def result(tmp_path: Path) -> tuple[dict[str, Any], str]:
    files = sorted((tmp_path / "out").glob("gpu-cpu-*-tiny.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0].with_suffix(".log").read_text()


def rows_by_step(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [doc.get("build"), *doc["cases"], doc.get("server")]
    return {r["step"]: r for r in rows if r}


def check_estimates_first(doc: dict[str, Any], log: str) -> None:
    """Every step's estimate is in the JSON and the log before the first step starts."""
    estimates = doc["plan"]["estimates"]
    assert [e["step"] for e in estimates] == STEPS
    assert all(e["estimate_s"] > 0 for e in estimates)
    first_step = log.index("build flux1-dev: estimate")
    for e in estimates:
        assert re.search(rf"  {re.escape(e['step'])} +~ *{e['estimate_s']:.1f} s", log[:first_step]), e


def test_tight_budget_skips_the_cases_that_no_longer_fit(tmp_path: Path) -> None:
    proc = subprocess.run(plan_cmd(tmp_path, "--budget-s", "30"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc, log = result(tmp_path)
    check_estimates_first(doc, log)
    rows = rows_by_step(doc)
    assert list(rows) == STEPS  # every step has its row: measured or skipped, none dropped
    assert rows["build flux1-dev"]["seconds"] > 0 and "skipped" not in rows["build flux1-dev"]
    assert rows["flux1-dev diffusers"]["seconds_median"] > 0
    for name in STEPS[2:]:  # each compiles: about a minute on this CPU, more than is left
        skipped = rows[name].get("skipped", "")
        m = re.fullmatch(r"budget: about (\d+) s needed, (\d+) s left", skipped)
        assert m and int(m[1]) > int(m[2]), rows[name]
        assert f"{name}: skipped (budget" in log
    assert [t["met"] for t in doc["targets"]] == [None] * 4  # nothing to judge: not measured
    assert not (tmp_path / "ckpt").exists()


def test_a_cut_off_run_keeps_every_row_written(tmp_path: Path) -> None:
    """Killed while fluxserve compiles, the run leaves a valid JSON with the rows measured."""
    proc = subprocess.Popen(
        plan_cmd(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill below ends it and its children
    )
    out = tmp_path / "out"
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(out.glob("gpu-cpu-*-tiny.json"))
            if files:
                doc = json.loads(files[0].read_text())  # valid at every moment (atomic rewrite)
                seen.add(len(doc["cases"]) + bool(doc.get("build")))
                if any(c["mode"] == "diffusers" for c in doc["cases"]):
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was cut off"
    doc, log = result(tmp_path)
    check_estimates_first(doc, log)
    rows = rows_by_step(doc)
    assert rows["build flux1-dev"]["seconds"] > 0
    assert rows["flux1-dev diffusers"]["seconds_median"] > 0 and rows["flux1-dev diffusers"]["runs"] == 3
    assert 2 in seen and seen <= {0, 1, 2}  # parsed at every read, the baseline's row last
    assert "flux1-dev diffusers: " in log and "s/image (median of 3)" in log


@pytest.mark.slow
def test_plan_first_tiny_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(plan_cmd(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc, log = result(tmp_path)
    check_estimates_first(doc, log)
    rows = rows_by_step(doc)
    assert list(rows) == STEPS
    for row in rows.values():
        assert "error" not in row and "skipped" not in row, row
        assert row["elapsed_s"] > 0 and row["estimate_s"] > 0
    dev, fast, schnell = rows["flux1-dev diffusers"], rows["flux1-dev fast"], rows["flux1-schnell fast"]
    assert (dev["width"], dev["steps"], dev["runs"], dev["warmup_runs"]) == (64, 2, 3, 1)
    for row in (fast, schnell):
        assert row["settings"]["compile"] is True and row["runs"] == 3
        assert row["ready_s"] == pytest.approx(row["load_s"] + row["warmup_s"], abs=0.02)
    # One compile cache for the plan: schnell's compile reads what dev's wrote.
    assert fast["settings"]["compile_cache_dir"] == schnell["settings"]["compile_cache_dir"]
    assert schnell["compiled_before"] is True and fast["compiled_before"] is False
    assert fast["speedup_vs_diffusers"] == pytest.approx(
        dev["seconds_median"] / fast["seconds_median"], rel=0.01
    )
    assert doc["plan"]["learned"]  # later estimates used what the run measured
    server = rows["server flux1-schnell fast"]
    assert server["clients"] == 8 and server["requests"] == 16 and server["images_per_s"] > 0
    assert server["gpu_busy"] is None  # no GPU to sample here
    assert doc["targets"][0]["target"].startswith("dev 28 steps") and doc["targets"][0]["value"] > 0
    assert [t["met"] for t in doc["targets"]] == [None] * 4  # tiny times judge no target
    assert "step                         estimate s" in log and "target GPU busy" in log
    assert not (tmp_path / "ckpt").exists()
