"""The command line: ``python bench/gpu.py`` parses its flags here and runs the parts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
    LOSSY_MODES,
    MODELS,
    MODES,
    PLAN,
    SERVER_ESTIMATE_S,
    fp8_ok,
)
from gpubench.configs import FULL, TINY
from gpubench.report import Report, print_table
from gpubench.runners import fast_quantize, run_diffusers, run_fluxserve
from gpubench.server import run_server
from gpubench.timing import image_difference


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; returns the exit status (0 even when a case failed: its row says why)."""
    ap = argparse.ArgumentParser(description=(gpubench.__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (proves the script)")
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
    ap.add_argument("--runs", type=int, default=5, help="timed runs per case (median; >= 5 for the record)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024; tiny 64)")
    ap.add_argument("--server-model", default="flux1-schnell", choices=MODELS)
    ap.add_argument("--server-mode", default="fast", choices=list(MODES))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=None, help="server requests (default 64; tiny 16)")
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

    start = time.monotonic()
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
        f"fast quantize {fast_quantize(device)!r}; parts {sorted(parts)}; "
        f"checkpoints in {workdir}; results {report.json_path}"
    )

    def left() -> float:
        return float("inf") if args.budget_s is None else args.budget_s - (time.monotonic() - start)

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
        row: dict[str, Any] = {
            "model": model,
            "mode": mode,
            "width": size[0],
            "height": size[1],
            "steps": case.steps,
        }
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
            report.log(f"{model} {mode}: {case.steps} steps at {size[0]}x{size[1]} ...")
            warmup = 2 if mode != "diffusers" and MODES[mode]["compile"] else 1
            if mode == "diffusers":
                timing = run_diffusers(case, ckpt, device, dtype, size, warmup, runs)
                row["call"] = f"{case.pipeline}.from_pretrained(dir, torch_dtype={dtype}).to('{device.type}')"
            else:
                timing, values, extra = run_fluxserve(
                    case, mode, ckpt, device, size, warmup, runs, data_root / f"{model}-{mode}"
                )
                row.update(settings=values, **extra)
                if mode in LOSSY_MODES:
                    row["lossy"] = True
                    row["note"] = (
                        "step caching with random weights: how many steps it skips is not what real "
                        "weights give; the time is an indication only"
                    )
            # What each mode does to the image: against every mode measured before it for this
            # model (bf16 against diffusers should be ~0; fp8 and step caching show their cost).
            if timing.first_image is not None:
                earlier = images.setdefault(model, {})
                row["image_vs"] = {m: image_difference(timing.first_image, im) for m, im in earlier.items()}
                earlier[mode] = timing.first_image
            median = statistics.median(timing.seconds)
            base = report.baseline(model) if mode != "diffusers" else median
            row.update(
                seconds_median=round(median, 4),
                seconds=[round(s, 4) for s in timing.seconds],
                runs=len(timing.seconds),
                warmup_runs=warmup,
                peak_mem_gib=None if timing.peak_mem_gib is None else round(timing.peak_mem_gib, 2),
                load_s=round(timing.load_s, 2),
                warmup_s=round(timing.warmup_s, 2),
                # from the load to the first image at full speed (fluxserve may compile at load)
                ready_s=round(timing.load_s + timing.warmup_s, 2),
                ratio_to_diffusers=None if not base else round(median / base, 4),
                speedup_vs_diffusers=None if not base else round(base / median, 3),
            )
            report.log(
                f"{model} {mode}: {median:.3f} s/image (median of {len(timing.seconds)}), "
                f"peak {row['peak_mem_gib']} GiB, load {row['load_s']} s, warm-up {row['warmup_s']} s"
                + (f", x{row['speedup_vs_diffusers']} vs diffusers" if base else "")
            )
        except Exception as exc:  # one failing mode must not cost the others
            import traceback

            row["error"] = f"{exc.__class__.__name__}: {exc}"
            report.log(f"{model} {mode}: FAILED {row['error']}\n{traceback.format_exc()}")
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
