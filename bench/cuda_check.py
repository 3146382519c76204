"""CUDA check (issue 29): does every model path of fluxserve's engine work on a real GPU?

Full-size FLUX architectures from their published configs with random weights (nothing can be
downloaded on the GPU machine; see :mod:`cudacheck.models`), saved as diffusers directories,
run through fluxserve's own engine and server, most valuable check first:

- ``memory-24gib``, ``memory-12gib``: FLUX.1-dev at 1024x1024, 28 steps, on a card of 24 (12)
  GiB: the process is capped with ``torch.cuda.set_per_process_memory_fraction`` and sees that
  card's free memory; the engine runs in the mode ``memory = "auto"`` picks there (with
  ``quantize = "auto"``) and must finish without OOM. The row has the mode, the engine's reason,
  the plan the engine's ``plan_memory`` makes from the architecture's sizes, s/image and peaks.
- ``fp8-vs-bf16``: ``quantize = "auto"`` against ``"none"``, same weights and seed: PSNR and
  mean absolute difference of the two images, both speeds (uncompiled).
- ``loras``: two requests with different random LoRAs (made with peft) and one without, in a
  row through one engine; each image must equal the one the same LoRA gives alone.
- ``kontext``: a Kontext edit with two input images, then a masked edit.
- ``seed-determinism`` and ``serve-compiled``: ``fluxserve serve`` with the default settings
  (compiled on CUDA, warmed up before ready): the time to ``/readyz``, what the first request
  compiles (dynamo's counters, counted not timed: it must be nothing), and whether the same
  request gives the same PNG bytes twice in a row (its prompt encoded again: the prompt cache
  holds one entry here) and with its prompt encoded ahead beside a long job (the worker's
  prefetch: a second CUDA stream, where cuBLAS promises the same bits only for one stream).
- ``klein``: FLUX.2 klein 4B text to image (last: FLUX.1-dev's files are deleted first, the
  GPU machine's disk cannot hold both).

Except for the server check, ``compile`` is off (a compile warm-up per engine would cost
minutes; the server check is the compiled path). Equality and edit checks run 4 steps.

Output: ``cuda-<device>-<date>.json`` (one row per check: ``check``, ``ok``, timings,
``peak_mem_gib``, ``error`` or ``skipped``; rewritten after every row, valid at every moment)
and ``.log`` in ``--out``, else ``$OUT``, else ``bench/results/``. ``--budget-s`` estimates each
check (and the checkpoints it still needs built) before starting it and records it as skipped
when it no longer fits. The device command is in bench/RESULTS.md, "CUDA check".

``--tiny`` runs every check on the CPU at tiny size (tests/test_cuda_check.py): no memory cap
there (the plan for a 24 and a 12 GiB card is recorded and that mode's settings run in host
memory), no fp8 (``auto`` picks none), and the server compiles nothing unless
``--tiny-compile``; each row says what the CPU could not do.

    python bench/cuda_check.py --budget-s 420            # on the GPU
    python bench/cuda_check.py --tiny --out /tmp/check   # on the CPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # on the device fluxserve is the repository, not installed
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from cudacheck import checks  # noqa: E402
from cudacheck.models import Checkpoints  # noqa: E402
from cudacheck.report import Report, peak_gib  # noqa: E402
from cudacheck.serving import check_serve  # noqa: E402
from gpubench.configs import FULL, TINY  # noqa: E402

Check = Callable[[checks.Run, list[dict[str, Any]], argparse.Namespace], None]


def _serve(run: checks.Run, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    check_serve(run, rows[1], rows[0], "true" if args.tiny_compile else None)


PLAN: list[tuple[list[str], list[str], float, Check]] = [
    # (rows, checkpoints needed, seconds on one H100 besides building them, the check)
    (["memory-24gib"], ["flux1-dev"], 75, lambda run, rows, a: checks.check_memory_cap(run, rows[0], 24)),
    (["memory-12gib"], ["flux1-dev"], 90, lambda run, rows, a: checks.check_memory_cap(run, rows[0], 12)),
    (["fp8-vs-bf16"], ["flux1-dev"], 75, lambda run, rows, a: checks.check_fp8(run, rows[0])),
    (["loras"], ["flux1-dev", "loras"], 60, lambda run, rows, a: checks.check_loras(run, rows[0])),
    (["kontext"], ["flux1-kontext-dev"], 45, lambda run, rows, a: checks.check_kontext(run, rows[0])),
    (["seed-determinism", "serve-compiled"], ["flux1-dev"], 150, _serve),
    # Last, although the issue ranks it above the server check: dev's 31 GiB are deleted before
    # klein's 15 GiB are written (the GPU machine's disk holds 64 GiB).
    (["klein"], ["flux2-klein-4b"], 30, lambda run, rows, a: checks.check_klein(run, rows[0], a.klein_steps)),
]
NAMES = [name for rows, *_ in PLAN for name in rows]
TINY_SCALE = 0.1
"""Tiny checks on the CPU take about a tenth of the GPU estimates (for ``--budget-s``)."""


def summary(row: dict[str, Any]) -> str:
    """One line of the final table."""
    if row.get("skipped"):
        return f"skipped: {row['skipped'][:90]}"
    if row.get("error"):
        return f"FAILED: {row['error'][:90]}"
    facts = [f"{k} {row[k]}" for k in ("mode", "seconds_per_image", "peak_mem_gib", "ready_s") if k in row]
    if "image_vs_bf16" in row:
        facts.append(f"fp8 vs bf16 {row['image_vs_bf16']}")
    if "equal_to_alone" in row:
        facts.append(f"equal to alone {row['equal_to_alone']}")
    if "first_request_compiled" in row:
        facts.append(f"first request compiled {row['first_request_compiled']}")
    if "same_bytes" in row:
        facts.append(f"same bytes {row['same_bytes']}, encoded ahead {row.get('prefetched_same_bytes')}")
    return ("ok" if row["ok"] else "NOT OK") + (": " + ", ".join(facts) if facts else "")


def main(argv: list[str] | None = None) -> int:
    """Run the checks asked for; 0 when none failed (skipped ones do not fail)."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (proves the script)")
    ap.add_argument("--checks", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="skip (and record) checks that no longer fit"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default $OUT, else bench/results)"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="checkpoints (default a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints at the end")
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024; tiny 64)")
    ap.add_argument("--steps", type=int, default=None, help="FLUX.1-dev steps of timed images (28; tiny 2)")
    ap.add_argument("--quick-steps", type=int, default=None, help="steps of equality/edit checks (4; tiny 2)")
    ap.add_argument("--klein-steps", type=int, default=None, help="FLUX.2 klein steps (4; tiny 2)")
    ap.add_argument("--tiny-compile", action="store_true", help="--tiny: the server compiles (slow on a CPU)")
    args = ap.parse_args(argv)
    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(NAMES))
    if unknown:
        ap.error(f"unknown checks {unknown}: {', '.join(NAMES)}")
    if args.tiny_compile and not args.tiny:
        ap.error("--tiny-compile goes with --tiny (on CUDA the server compiles by default)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded (the device has no network)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or use --tiny on the CPU", file=sys.stderr)
        return 2
    if args.tiny:  # tiny tensors: one thread is fastest and shares a busy CPU best
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the server's process too
    args.klein_steps = args.klein_steps or (2 if args.tiny else 4)
    out_dir = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    report = Report(out_dir, device, args.tiny, args.budget_s)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fluxserve-cuda-check-"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    run = checks.Run(
        report=report,
        device=device,
        tiny=args.tiny,
        size=args.size or (64 if args.tiny else 1024),
        steps=args.steps or (2 if args.tiny else 28),
        quick_steps=args.quick_steps or (2 if args.tiny else 4),
        checkpoints=Checkpoints(workdir, TINY if args.tiny else FULL, device, dtype, report.log),
        data_root=Path(tempfile.mkdtemp(prefix="fluxserve-cuda-check-data-")),
    )
    report.log(
        f"device {report.doc['device_full']}, torch {torch.__version__}, "
        f"diffusers {report.doc['diffusers']}; checks {wanted}; checkpoints in {workdir}; "
        f"results {report.json_path}"
    )
    scale = TINY_SCALE if args.tiny else 1.0
    failed = False
    plan = [step for step in PLAN if set(step[0]) & set(wanted)]
    for k, (names, needs, estimate, check) in enumerate(plan):
        if not args.keep:
            run.checkpoints.drop(keep={n for step in plan[k:] for n in step[1]})
        rows: list[dict[str, Any]] = [{"check": name, "ok": False} for name in names]
        need = (estimate + run.checkpoints.estimate_s(needs)) * scale
        if need > report.left_s():
            for row in rows:
                row["skipped"] = f"budget: about {need:.0f} s needed, {report.left_s():.0f} s left"
                report.add(row)
            continue
        report.log(f"{', '.join(names)}: starting (estimate {need:.0f} s, {report.left_s():.0f} s left)")
        for row in rows:  # in the file while it runs: a run cut off names the check it was in
            report.add(dict(row, running=True, estimate_s=round(need)))
            row["estimate_s"] = round(need)
        start = time.perf_counter()
        try:
            check(run, rows, args)
        except Exception as exc:  # one failing check must not cost the others; its row says why
            for row in rows:
                if not row.get("ok") and not row.get("skipped"):
                    row["error"] = f"{exc.__class__.__name__}: {str(exc)[:2000]}"
                    row.setdefault("peak_mem_gib", peak_gib(device)["peak_mem_gib"])
            report.log(traceback.format_exc())
        for row in rows:
            row["check_s"] = round(time.perf_counter() - start, 2)
            failed |= not row["ok"] and not row.get("skipped")
            report.add(row)
        checks.free_memory()

    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(run.data_root, ignore_errors=True)
    for row in report.doc["checks"]:
        report.log(f"{row['check']:<17} {summary(row)}")
    report.log(f"results: {report.json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
