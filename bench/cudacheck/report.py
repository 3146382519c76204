"""The check's record: one JSON document rewritten after every row (valid at every moment), a
console log beside it, the time budget, and the small measurements every check shares."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3


def device_label(device: torch.device) -> str:
    """``h100``, ``h200``, ``a100`` ... from the GPU's name; ``cpu`` on the CPU."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h200", "h100", "b200", "a100", "l40s", "l4", "a10g", "4090", "3090"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


class Report:
    """``cuda-<device>-<date>[-tiny].json`` and ``.log`` in ``out_dir``: the run's facts and one
    row per check (``check``, ``ok``, timings, ``peak_mem_gib``, ``error`` or ``skipped``)."""

    def __init__(self, out_dir: Path, device: torch.device, tiny: bool, budget_s: float | None) -> None:
        import diffusers

        self.device_name = device_label(device)
        self.start = time.monotonic()
        self.budget_s = budget_s
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"cuda-{self.device_name}-{date}" + ("-tiny" if tiny else "")
        self.json_path = out_dir / f"{stem}.json"
        self.log_path = out_dir / f"{stem}.log"
        self.doc: dict[str, Any] = {
            "device": self.device_name,
            "device_full": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "memory_total_gib": (
                round(torch.cuda.get_device_properties(device).total_memory / GIB, 2)
                if device.type == "cuda"
                else None
            ),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "date": date,
            "tiny": tiny,
            "budget_s": budget_s,
            "checks": [],
        }
        self._log = self.log_path.open("w")
        self.save()

    def log(self, text: str) -> None:
        """Print a line and append it to the log."""
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def left_s(self) -> float:
        """Seconds of the budget left (infinite without ``--budget-s``)."""
        if self.budget_s is None:
            return math.inf
        return self.budget_s - (time.monotonic() - self.start)

    def add(self, row: dict[str, Any]) -> None:
        """Record one check's row (replacing an earlier row of the same check) and write the file."""
        row.setdefault("ok", False)
        self.doc["checks"] = [r for r in self.doc["checks"] if r["check"] != row["check"]] + [row]
        self.save()
        state = "ok" if row["ok"] else "skipped" if row.get("skipped") else "FAILED"
        if row.get("running"):
            state = "running"
        why = row.get("skipped") or row.get("error") or ""
        self.log(f"{row['check']}: {state}" + (f" ({why})" if why else ""))

    def save(self) -> None:
        """Write the JSON document atomically (a reader never sees half a file)."""
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str, allow_nan=False) + "\n")
        tmp.replace(self.json_path)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a host clock times the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> dict[str, float | None]:
    """Peak GPU memory since :func:`reset_peak`: allocated (tensors) and reserved (the
    allocator's pool, what a memory cap limits); None on a CPU."""
    if device.type != "cuda":
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 2),
    }


def image_difference(a: Any, b: Any) -> dict[str, Any]:
    """Mean absolute difference (levels of 255) and PSNR (dB; None: identical) of two images."""
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    psnr = None if mse == 0 else round(10 * math.log10(255**2 / mse), 2)
    return {"mean_abs": round(float(np.abs(x - y).mean()), 4), "psnr_db": psnr, "identical": mse == 0}


def same_pixels(a: Any, b: Any) -> bool:
    """Whether two images have the same size, mode and pixel bytes."""
    return bool(a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes())


def image_facts(image: Any) -> dict[str, Any]:
    """Size and pixel spread of an image (a spread of 0: a blank image, e.g. from NaN latents)."""
    import numpy as np

    x = np.asarray(image.convert("RGB"), dtype=np.float64)
    return {"image_size": list(image.size), "pixel_std": round(float(x.std()), 2)}


def noise_image(size: tuple[int, int], seed: int) -> Any:
    """A deterministic input image (noise, not a flat colour)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def right_half_mask(size: tuple[int, int]) -> Any:
    """White (repaint) on the right half, black (keep) on the left."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([size[0] // 2, 0, size[0], size[1]], fill=255)
    return mask
