"""Timing one case: synchronised wall-clock runs after a warm-up, and image distances."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpubench import GIB


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (so wall-clock time is the work's time)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_image(size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """A deterministic input image for Kontext (noise, not zeros)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@dataclass
class Timing:
    """What one case measured."""

    load_s: float
    warmup_s: float
    seconds: list[float] = field(default_factory=list)
    peak_mem_gib: float | None = None
    first_image: Any = None
    """The first timed call's image (prompt 0, seed 0): compared across modes."""


def time_calls(
    call: Callable[[int], Any], device: torch.device, warmup: int, runs: int
) -> tuple[float, list[float], float | None, Any]:
    """Run ``call(i)`` ``warmup`` times (timed together), then ``runs`` times each timed; returns
    (warm-up seconds, run seconds, peak memory GiB over the runs and the weights, the first
    timed call's result)."""
    t = time.perf_counter()
    for i in range(warmup):
        call(10_000 + i)
    sync(device)
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    first = None
    for i in range(runs):
        sync(device)
        t = time.perf_counter()
        out = call(i)
        sync(device)
        seconds.append(time.perf_counter() - t)
        first = out if i == 0 else first
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return warmup_s, seconds, peak, first


def image_difference(a: Any, b: Any) -> dict[str, float]:
    """How far two images of the same prompt and seed are apart: mean absolute difference in
    levels of 255, and PSNR in dB (inf: identical). With random weights this measures how much
    a mode changes the output, not how good the picture looks."""
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"mean_abs": round(float(np.abs(x - y).mean()), 3), "psnr_db": round(psnr, 2)}


def prompt(i: int) -> str:
    """A different prompt per call: fluxserve's prompt-embedding cache must not skip the text
    encoders in a per-image timing (the plain pipeline has no such cache)."""
    return f"a photo of a red cat on the {i} blue dog"
