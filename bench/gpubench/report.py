"""The run's output: the console log and the JSON document, rewritten after every case."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import torch


class Report:
    """The run's JSON document and console log, written to disk after every change."""

    def __init__(self, out_dir: Path, device: torch.device, tiny: bool, merge: Path | None) -> None:
        import diffusers

        self.device_name = device_label(device)
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"gpu-{self.device_name}-{date}" + ("-tiny" if tiny else "")
        self.json_path = out_dir / f"{stem}.json"
        self.log_path = out_dir / f"{stem}.log"
        self.doc: dict[str, Any] = {
            "device": self.device_name,
            "device_full": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "date": date,
            "tiny": tiny,
            "cases": [],
            "server": None,
        }
        if merge is not None and merge.is_file():  # the second command adds to the first's file
            old = json.loads(merge.read_text())
            self.doc["cases"] = old.get("cases", [])
            self.doc["server"] = old.get("server")
            if merge.with_suffix(".log").is_file():
                self.log_path.write_text(merge.with_suffix(".log").read_text())
        self._log = self.log_path.open("a")
        self.save()

    def log(self, text: str) -> None:
        """Print a line and append it to the console log."""
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def add_case(self, row: dict[str, Any]) -> None:
        """Record one measured (or failed, or skipped) case and write the file at once."""
        self.doc["cases"] = [
            c for c in self.doc["cases"] if (c["model"], c["mode"]) != (row["model"], row["mode"])
        ] + [row]
        self.save()

    def baseline(self, model: str) -> float | None:
        """The plain diffusers median of ``model``, if measured."""
        for c in self.doc["cases"]:
            if c["model"] == model and c["mode"] == "diffusers" and c.get("seconds_median"):
                return float(c["seconds_median"])
        return None

    def save(self) -> None:
        """Write the JSON document (atomically)."""
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        tmp.replace(self.json_path)


def device_label(device: torch.device) -> str:
    """``h100``, ``h200``, ``a100`` ... from the GPU's name; ``cpu`` on the CPU."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h200", "h100", "b200", "a100", "l40s", "l4", "a10g", "4090"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def print_table(report: Report) -> None:
    """The summary table, last (the device's reply carries the end of the output)."""
    report.log(f"{'model':<18} {'mode':<13} {'s/image':>8} {'x diff':>7} {'peak GiB':>8} {'ready s':>9}")
    for c in report.doc["cases"]:
        if "seconds_median" in c:
            report.log(
                f"{c['model']:<18} {c['mode']:<13} {c['seconds_median']:>8.3f} "
                f"{c.get('speedup_vs_diffusers') or 0:>7.2f} {c.get('peak_mem_gib') or 0:>8.1f} "
                f"{c['ready_s']:>9.1f}"
            )
        else:
            report.log(f"{c['model']:<18} {c['mode']:<13} {c.get('error') or c.get('skipped')}")
    s = report.doc.get("server")
    if s and ("skipped" in s or "images_per_s" not in s):
        report.log(f"server: {s.get('skipped') or s.get('error')}")
    elif s:
        report.log(
            f"server {s.get('model')} {s.get('mode')}: {s.get('clients')} clients, "
            f"{s.get('images_per_s')} images/s, gpu busy {s.get('gpu_busy')}, "
            f"engine busy {s.get('engine_busy')}" + (f", ERROR {s['error']}" if s.get("error") else "")
        )
    report.log(f"results: {report.json_path}")
