"""One case, measured: run a side (plain diffusers or fluxserve's engine) and fill its JSON row."""

from __future__ import annotations

import statistics
import traceback
from pathlib import Path
from typing import Any

import torch

from gpubench.cases import LOSSY_MODES, ModelCase
from gpubench.report import Report
from gpubench.runners import run_diffusers, run_fluxserve
from gpubench.timing import image_difference


def new_row(case: ModelCase, mode: str, size: tuple[int, int]) -> dict[str, Any]:
    """The row of ``case`` in ``mode`` before it is measured."""
    return {"model": case.name, "mode": mode, "width": size[0], "height": size[1], "steps": case.steps}


def measure_case(
    row: dict[str, Any],
    case: ModelCase,
    ckpt: Path,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    warmup: int,
    runs: int,
    data_dir: Path,
    images: dict[str, dict[str, Any]],
    report: Report,
    compile_cache: Path | None = None,
) -> None:
    """Time ``row``'s mode of ``case`` on ``ckpt`` and add what it measured to ``row``; raises
    when the case fails. ``images`` (model -> mode -> first image) gets this case's first image,
    after it is compared with those of the modes measured before it."""
    model, mode = case.name, row["mode"]
    report.log(f"{model} {mode}: {case.steps} steps at {size[0]}x{size[1]} ...")
    if mode == "diffusers":
        timing = run_diffusers(case, ckpt, device, dtype, size, warmup, runs)
        row["call"] = f"{case.pipeline}.from_pretrained(dir, torch_dtype={dtype}).to('{device.type}')"
    else:
        timing, values, extra = run_fluxserve(
            case, mode, ckpt, device, size, warmup, runs, data_dir, compile_cache
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


def record_error(row: dict[str, Any], label: str, exc: BaseException, report: Report) -> None:
    """Put ``exc`` in ``row`` and the log (one failing case must not cost the others)."""
    row["error"] = f"{exc.__class__.__name__}: {exc}"
    report.log(f"{label}: FAILED {row['error']}\n{traceback.format_exc()}")
