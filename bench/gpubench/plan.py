"""Named plans: a fixed list of steps that fits one device command (``--plan first``, issue 28).

``first`` is the plan for a 15-minute GPU loan: one command of about 7 minutes, most important
step first, each step's row written to the JSON (and the log) the moment it is measured:

1. ``build flux1-dev``: FLUX.1 [dev]'s full architecture with random weights, built on the GPU
   and saved once to local disk (both sides then load the same files, see bench/RESULTS.md);
2. ``flux1-dev diffusers``: plain diffusers, bf16, 28 steps at 1024x1024, median of 3 after 1
   warm-up;
3. ``flux1-dev fast``: fluxserve's engine in mode ``fast`` on the same directory, median of 3
   after 1 warm-up (its compile happens at load: ``ready_s``, reported apart);
4. ``flux1-schnell fast``: the schnell architecture (no guidance embedding, schnell's
   scheduler) over dev's transformer files, 4 steps, ``fast``, median of 3;
5. ``server flux1-schnell fast``: ``fluxserve serve`` with that checkpoint, 8 concurrent
   clients, 16 images, ``gpu_busy`` from NVML.

Every step is estimated before anything starts (:mod:`gpubench.estimate`), and again just before
it runs, with what the run has measured so far; a step whose estimate no longer fits the time
left in ``--budget-s`` is skipped and recorded as skipped, with the reason.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gpubench.builders import Checkpoints, free_memory
from gpubench.cases import CASES, ModelCase
from gpubench.estimate import Costs, costs_for
from gpubench.measure import measure_case, new_row, record_error
from gpubench.report import Report, print_table
from gpubench.server import run_server


@dataclass(frozen=True)
class Step:
    """One step of a plan."""

    kind: str
    """``build``, ``case`` or ``server``."""
    model: str
    mode: str = ""

    @property
    def name(self) -> str:
        """How the log and the JSON name the step."""
        if self.kind == "build":
            return f"build {self.model}"
        return f"{'server ' if self.kind == 'server' else ''}{self.model} {self.mode}"


PLANS: dict[str, list[Step]] = {
    "first": [
        Step("build", "flux1-dev"),
        Step("case", "flux1-dev", "diffusers"),
        Step("case", "flux1-dev", "fast"),
        Step("case", "flux1-schnell", "fast"),
        Step("server", "flux1-schnell", "fast"),
    ],
}
RUNS = 3
"""Timed runs per case in a plan (median of 3 after one warm-up)."""
WARMUP = 1
"""Warm-up calls per case: fluxserve's compiled mode compiles at load, before these."""

# The targets: (what, row, field, bound, at most?). Printed, never asserted.
TARGETS = [
    ("dev 28 steps 1024x1024 fast <= 2.4 s", "flux1-dev fast", "seconds_median", 2.4, True),
    ("dev fast >= 2.7x plain diffusers", "flux1-dev fast", "speedup_vs_diffusers", 2.7, False),
    ("schnell 4 steps fast <= 0.35 s", "flux1-schnell fast", "seconds_median", 0.35, True),
    ("GPU busy >= 95 % with 8 clients", "server flux1-schnell fast", "gpu_busy", 0.95, False),
]


@dataclass
class PlanRun:
    """Where a plan's run stands: the inputs, the cost model, what has been measured."""

    steps: list[Step]
    cases: dict[str, ModelCase]
    size: tuple[int, int]
    server_size: tuple[int, int]
    clients: int
    requests: int
    costs: Costs
    left: Callable[[], float]
    timeout_s: float
    """The server's longest wait (its readiness, one request) without a budget."""
    compiled: bool = False
    """A compiled case has run: later compiles read inductor's cache."""
    built: bool = False

    def estimate(self, step: Step, compiled: bool | None = None) -> float:
        """Seconds ``step`` should take, from the cost model as it stands now (``compiled``:
        whether a compiled case will have run before it; default: whether one has)."""
        compiled = self.compiled if compiled is None else compiled
        if step.kind == "build":
            return self.costs.build()
        steps = self.cases[step.model].steps
        if step.kind == "server":  # the compile cache serves the size it was written at
            return self.costs.server(steps, self.requests, compiled and self.server_size == self.size)
        return self.costs.case(step.mode, steps, WARMUP + RUNS, compiled)

    def estimates(self) -> list[dict[str, Any]]:
        """Every step's estimate before the run, the steps taken in order."""
        out = []
        for i, step in enumerate(self.steps):
            compiled = any(s.kind != "build" and s.mode != "diffusers" for s in self.steps[:i])
            out.append({"step": step.name, "estimate_s": round(float(self.estimate(step, compiled)), 1)})
        return out


def run_plan(
    name: str,
    report: Report,
    checkpoints: Checkpoints,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    clients: int,
    requests: int,
    left: Callable[[], float],
    tiny: bool,
    budget_s: float | None,
) -> None:
    """Run plan ``name``: estimates first (printed and in the JSON), then each step that fits."""
    cases = {k: replace(c, steps=2) for k, c in CASES.items()} if tiny else CASES
    server_side = max(256, size[0]) if tiny else size[0]  # the API's smallest side is 256
    state = PlanRun(
        PLANS[name],
        cases,
        size,
        (server_side, server_side),
        clients,
        requests,
        costs_for(report.device_name, tiny),
        left,
        300 if tiny else 480,  # a tiny server compiles on the CPU: minutes when it is busy
    )
    estimates = state.estimates()
    report.doc["plan"] = {
        "name": name,
        "budget_s": budget_s,
        "costs": state.costs.label,
        "estimates": estimates,
        "learned": state.costs.learned,
    }
    report.save()
    budget = "no budget" if budget_s is None else f"budget {budget_s:.0f} s"
    report.log(f"plan {name!r}, {budget}, estimates from {state.costs.label}:")
    for e in estimates:
        report.log(f"  {e['step']:<28} ~{e['estimate_s']:>6.1f} s")
    report.log(f"  {'total':<28} ~{sum(e['estimate_s'] for e in estimates):>6.1f} s")

    # The servers' data beside the checkpoints: a run cut off leaves nothing elsewhere.
    data_root = checkpoints.root / "data"
    compile_cache = data_root / "compile-cache"  # one for the plan: a later compile reads it
    images: dict[str, dict[str, Any]] = {}
    for step in state.steps:
        need = state.estimate(step)
        row = _row(step, state)
        row["estimate_s"] = round(need, 1)
        skip = _skip_reason(step, state, need)
        if skip:
            row["skipped"] = skip
            report.log(f"{step.name}: skipped ({skip})")
        else:
            report.log(
                f"{step.name}: estimate {need:.0f} s" + ("" if budget_s is None else f", {left():.0f} s left")
            )
            t = time.monotonic()
            try:
                _run_step(
                    step, row, state, report, checkpoints, device, dtype, data_root, images, compile_cache
                )
            except Exception as exc:  # one failing step must not cost the others
                record_error(row, step.name, exc, report)
            row["elapsed_s"] = round(time.monotonic() - t, 1)
            free_memory()
        _record(step, row, state, report)
    shutil.rmtree(data_root, ignore_errors=True)
    print_table(report)
    summary(state, report)
    report.doc["targets"] = targets(report, judged=not tiny)
    report.save()


def _row(step: Step, state: PlanRun) -> dict[str, Any]:
    if step.kind == "build":
        return {"model": step.model}
    if step.kind == "server":
        return {"model": step.model, "mode": step.mode, "clients": state.clients, "requests": state.requests}
    return new_row(state.cases[step.model], step.mode, state.size)


def _skip_reason(step: Step, state: PlanRun, need: float) -> str | None:
    if step.kind != "build" and not state.built:
        return "needs the flux1-dev checkpoint, which was not built"
    if need > state.left():
        return f"budget: about {need:.0f} s needed, {max(0.0, state.left()):.0f} s left"
    return None


def _run_step(
    step: Step,
    row: dict[str, Any],
    state: PlanRun,
    report: Report,
    checkpoints: Checkpoints,
    device: torch.device,
    dtype: torch.dtype,
    data_root: Path,
    images: dict[str, dict[str, Any]],
    compile_cache: Path,
) -> None:
    case = state.cases[step.model]
    if step.kind == "build":
        t = time.perf_counter()
        path = checkpoints.path(step.model)
        row.update(seconds=round(time.perf_counter() - t, 1), path=str(path))
        row["gib"] = round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30, 2)
        state.built = True
        return
    ckpt = checkpoints.path(step.model)  # schnell: links to dev's files, no second copy
    data_dir = data_root / f"{step.model}-{step.mode}"
    if step.kind == "case":
        row["compiled_before"] = state.compiled and step.mode != "diffusers"
        measure_case(
            row, case, ckpt, device, dtype, state.size, WARMUP, RUNS, data_dir, images, report, compile_cache
        )
        state.compiled |= step.mode != "diffusers"
        return
    report.log(
        f"server: {step.model} in mode {step.mode}, {state.clients} clients, {state.requests} images "
        f"at {state.server_size[0]}x{state.server_size[1]} ..."
    )
    # Ends (and writes its row) before the device command's limit when there is a budget.
    timeout = max(30.0, min(state.timeout_s, state.left() + 30))
    res = run_server(
        report,
        case,
        ckpt,
        device,
        step.mode,
        state.server_size,
        state.clients,
        state.requests,
        report.json_path.parent,
        data_dir,
        timeout,
        compile_cache,
    )
    row.update(res)


def _record(step: Step, row: dict[str, Any], state: PlanRun, report: Report) -> None:
    """Write ``row`` where the JSON keeps it (``build``, ``cases`` or ``server``), at once."""
    row["step"] = step.name
    if step.kind == "build":
        report.doc["build"] = row
        report.save()
    elif step.kind == "server":
        report.doc["server"] = row
        report.save()
        if "skipped" not in row:
            report.log("server: " + ", ".join(f"{k} {row[k]}" for k in row if k in _SERVER_SHOWN))
    else:
        report.add_case(row)
        state.costs.learn(row)
        report.doc["plan"]["learned"] = state.costs.learned
        report.save()


_SERVER_SHOWN = ("images_per_s", "gpu_busy", "engine_busy", "latency_p50_s", "ready_s", "warmup_s", "error")


def summary(state: PlanRun, report: Report) -> None:
    """Each step's estimate against the seconds it took (the device's reply shows the end)."""
    rows = {
        r.get("step"): r
        for r in [report.doc.get("build"), *report.doc["cases"], report.doc.get("server")]
        if r
    }
    report.log(f"{'step':<28} {'estimate s':>10} {'took s':>8}  outcome")
    for step in state.steps:
        r = rows.get(step.name, {})
        outcome = (
            f"skipped: {r['skipped']}"
            if "skipped" in r
            else f"error: {r['error']}"
            if "error" in r
            else "measured"
        )
        took = "-" if r.get("elapsed_s") is None else r["elapsed_s"]
        report.log(f"{step.name:<28} {r.get('estimate_s', 0):>10.1f} {took:>8}  {outcome}")


def targets(report: Report, judged: bool) -> list[dict[str, Any]]:
    """The issue's targets against this run's rows (``met`` None: not measured, or not
    ``judged``: a tiny run's times say nothing about them)."""
    rows = {c.get("step", f"{c['model']} {c['mode']}"): c for c in report.doc["cases"]}
    if report.doc.get("server"):
        rows["server flux1-schnell fast"] = report.doc["server"]
    out = []
    for what, step, key, bound, at_most in TARGETS:
        value = rows.get(step, {}).get(key)
        met = None if value is None or not judged else value <= bound if at_most else value >= bound
        out.append({"target": what, "value": value, "met": met})
        verdict = (
            "" if value is None else " (tiny: not judged)" if not judged else " (met)" if met else " (missed)"
        )
        report.log(f"target {what}: {'not measured' if value is None else value}{verdict}")
    return out
