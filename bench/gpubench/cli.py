"""The command line: ``python bench/gpu.py`` parses its flags here and runs the parts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import gpubench
from gpubench import REPO
from gpubench.builders import Checkpoints, free_memory
from gpubench.cases import (
    BUILD_ESTIMATE_S,
    CASES,
    ESTIMATE_S,
    MODELS,
    MODES,
    PLAN,
    SERVER_ESTIMATE_S,
    fp8_ok,
)
from gpubench.configs import FULL, TINY
from gpubench.measure import measure_case, new_row, record_error
from gpubench.plan import PLANS, run_plan
from gpubench.report import Report, print_table
from gpubench.runners import fast_quantize
from gpubench.server import run_server


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; returns the exit status (0 even when a case failed: its row says why)."""
    ap = argparse.ArgumentParser(description=(gpubench.__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (proves the script)")
    ap.add_argument(
        "--plan",
        choices=sorted(PLANS),
        default=None,
        help=(
            "a named plan instead of --part/--models/--modes: 'first' builds dev once and runs "
            "dev diffusers, dev fast, schnell fast, then the server (gpubench.plan)"
        ),
    )
    ap.add_argument("--part", default="engine,server", help="engine, server, or both (comma-separated)")
    ap.add_argument("--models", default=",".join(MODELS), help="models for the engine part")
    ap.add_argument(
        "--modes",
        default="diffusers," + ",".join(MODES),
        help=(
            "modes for the engine part: they filter PLAN, the (model, mode) list in this file, "
            "most important first (--tiny: every model in every mode)"
        ),
    )
    ap.add_argument(
        "--runs", type=int, default=5, help="timed runs per case (median; >= 5 for the record; a plan: 3)"
    )
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024; tiny 64)")
    ap.add_argument("--server-model", default="flux1-schnell", choices=MODELS)
    ap.add_argument("--server-mode", default="fast", choices=list(MODES))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--requests", type=int, default=None, help="server requests (default 64; tiny and --plan first 16)"
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="checkpoints (default a temp dir on local disk)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default $OUT, else bench/results)"
    )
    ap.add_argument("--merge", type=Path, default=None, help="a JSON file of an earlier part to add to")
    ap.add_argument("--budget-s", type=float, default=None, help="skip cases whose estimate no longer fits")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints at the end")
    args = ap.parse_args(argv)

    parts = {p.strip() for p in args.part.split(",") if p.strip()}
    if not parts <= {"engine", "server"}:
        ap.error("--part takes engine and/or server")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in models:
        if m not in CASES:
            ap.error(f"unknown model {m!r}: one of {', '.join(MODELS)}")
    for m in modes:
        if m != "diffusers" and m not in MODES:
            ap.error(f"unknown mode {m!r}: diffusers or one of {', '.join(MODES)}")

    start = gpubench.STARTED
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded (the device has no network)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or use --tiny on the CPU", file=sys.stderr)
        return 2
    if args.tiny:  # tiny tensors: one thread is fastest, and shares a busy CPU best
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the server's process too
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = TINY if args.tiny else FULL
    side = args.size or (64 if args.tiny else 1024)
    size = (side, side)
    runs = max(1, args.runs)
    out_dir = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    report = Report(out_dir, device, args.tiny, args.merge)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fluxserve-gpu-bench-"))
    checkpoints = Checkpoints(workdir, arch, device, dtype, report)
    report.log(
        f"device {report.doc['device_full']}, torch {torch.__version__}, "
        f"diffusers {report.doc['diffusers']}, fp8 {'yes' if fp8_ok(device) else 'no'}, "
        f"fast quantize {fast_quantize(device)!r}; "
        + (f"plan {args.plan!r}; " if args.plan else f"parts {sorted(parts)}; ")
        + f"checkpoints in {workdir}; results {report.json_path}"
    )

    def left() -> float:
        return float("inf") if args.budget_s is None else args.budget_s - (time.monotonic() - start)

    if args.plan:
        requests = args.requests or 16
        run_plan(
            args.plan,
            report,
            checkpoints,
            device,
            dtype,
            size,
            args.clients,
            requests,
            left,
            args.tiny,
            args.budget_s,
        )
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0

    cases = {k: replace(c, steps=2) for k, c in CASES.items()} if args.tiny else CASES
    plan = [(m, mode) for m, mode in PLAN if m in models and mode in modes] if "engine" in parts else []
    if args.tiny and "engine" in parts:  # every mode asked for, for every model: each path proven
        plan = [
            (m, mode)
            for m in models
            for mode in modes
            if not (
                MODES.get(mode, {}).get("cache", "none") != "none"
                and cases[m].pipeline == "FluxKontextPipeline"
            )
        ]
    server_needs = {args.server_model} if "server" in parts else set()
    data_root = Path(tempfile.mkdtemp(prefix="fluxserve-gpu-data-"))
    images: dict[str, dict[str, Any]] = {}  # model -> mode -> first timed image
    for k, (model, mode) in enumerate(plan):
        case = cases[model]
        row = new_row(case, mode, size)
        built = (workdir / model / ".complete").exists()
        need = ESTIMATE_S.get((model, mode), 60) + (0 if built else BUILD_ESTIMATE_S[model])
        need += SERVER_ESTIMATE_S if server_needs else 0
        if not args.tiny and need > left():
            row["skipped"] = f"budget: about {need} s needed, {left():.0f} s left"
            report.log(f"{model} {mode}: skipped ({row['skipped']})")
            report.add_case(row)
            continue
        try:
            ckpt = checkpoints.path(model)
            warmup = 2 if mode != "diffusers" and MODES[mode]["compile"] else 1
            data_dir = data_root / f"{model}-{mode}"
            measure_case(row, case, ckpt, device, dtype, size, warmup, runs, data_dir, images, report)
        except Exception as exc:  # one failing mode must not cost the others
            record_error(row, f"{model} {mode}", exc, report)
        free_memory()  # the pipeline of this case is garbage now
        report.add_case(row)
        later = {m for m, _ in plan[k + 1 :]} | server_needs
        checkpoints.drop(model, later)

    if "server" in parts:
        need = SERVER_ESTIMATE_S + (
            0 if (workdir / args.server_model / ".complete").exists() else BUILD_ESTIMATE_S[args.server_model]
        )
        if not args.tiny and need > left():
            report.doc["server"] = {"skipped": f"budget: about {need} s needed, {left():.0f} s left"}
            report.save()
        else:
            ckpt = checkpoints.path(args.server_model)
            requests = args.requests or (16 if args.tiny else 64)
            server_side = max(256, side) if args.tiny else side  # the API's smallest side is 256
            report.log(
                f"server: {args.server_model} in mode {args.server_mode}, {args.clients} clients, "
                f"{requests} images at {server_side}x{server_side} ..."
            )
            timeout = 120 if args.tiny else 480
            res = run_server(
                report,
                cases[args.server_model],
                ckpt,
                device,
                args.server_mode,
                (server_side, server_side),
                args.clients,
                requests,
                out_dir,
                data_root / "server",
                timeout,
            )
            report.doc["server"] = res
            report.save()
            report.log("server: " + json.dumps(res))

    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(data_root, ignore_errors=True)
    print_table(report)
    return 0
