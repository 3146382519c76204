"""The GPU trainer's resumable state on disk, in parts small enough to come back from a lent
machine (its ``$OUT`` returns at most 8 files of 16 MiB each, 64 MiB together).

``state.json`` names the parts (``state.0001.00.pt`` ...: save number, part) and says how far
training got; it is written after its parts, and the previous save's parts are removed only
then, so a directory with a ``state.json`` always holds a whole state. Adam's moment
estimates are kept in bfloat16 (half the bytes; a resumed run continues from them).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

PART_BYTES = 15 * 1024 * 1024
MANIFEST = "state.json"


def compact_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict`` with its float32 moment tensors stored as bfloat16."""
    out = {"param_groups": state["param_groups"], "state": {}}
    for key, slot in state["state"].items():
        out["state"][key] = {
            k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.dtype == torch.float32 and v.dim() else v
            for k, v in slot.items()
        }
    return out


def expand_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`compact_optimizer` (moments back to float32)."""
    out = {"param_groups": state["param_groups"], "state": {}}
    for key, slot in state["state"].items():
        out["state"][key] = {
            k: v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16 else v for k, v in slot.items()
        }
    return out


def save_state(state: dict[str, Any], directory: Path, summary: dict[str, Any]) -> int:
    """Write ``state`` (tensors moved to the CPU by the caller) to ``directory`` in parts,
    then the manifest with ``summary``; returns the bytes written. Parts of an older, longer
    state are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    before = read_summary(directory)
    generation = (before or {}).get("generation", 0) + 1
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    names = []
    for i in range(0, max(1, len(data)), PART_BYTES):
        name = f"state.{generation:04d}.{i // PART_BYTES:02d}.pt"
        tmp = directory / (name + ".tmp")
        tmp.write_bytes(data[i : i + PART_BYTES])
        os.replace(tmp, directory / name)
        names.append(name)
    manifest = {"parts": names, "bytes": len(data), "generation": generation, **summary}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)
    for old in directory.glob("state.*.pt"):
        if old.name not in names:
            old.unlink()
    return len(data)


def read_summary(directory: Path) -> dict[str, Any] | None:
    """The manifest of the state in ``directory``, or None if there is none."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def load_state(directory: Path) -> dict[str, Any]:
    """The state that :func:`save_state` wrote to ``directory`` (on the CPU)."""
    manifest = read_summary(directory)
    if manifest is None:
        raise FileNotFoundError(directory / MANIFEST)
    data = b"".join((directory / name).read_bytes() for name in manifest["parts"])
    if len(data) != manifest["bytes"]:
        raise ValueError(f"{directory}: the state's parts hold {len(data)} bytes, not {manifest['bytes']}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # type: ignore[no-any-return]
