"""Per-request LoRA adapters on a loaded pipeline: load each once, switch between them per job.

Adapters are loaded through diffusers (``load_lora_weights``, which reads diffusers/PEFT and
kohya layouts) under their own adapter names and stay loaded, up to ``capacity`` per pipeline;
the least recently used one is deleted when a new one would exceed it. A job then activates
exactly its set with its scales (``set_adapters``), or disables all of them: the base model's
weights are never changed (nothing is fused), so a job gives the same bytes whatever ran before
it. A scale of 0 contributes nothing, so such an adapter is skipped rather than computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxserve.spec import LoraRef

log = logging.getLogger("fluxserve.engine")


class AdapterError(RuntimeError):
    """A LoRA file that could not be applied to the model (wrong model, corrupt file)."""


@dataclass
class AdapterSet:
    """The adapters loaded on one pipeline, least recently used first."""

    capacity: int
    loaded: OrderedDict[str, tuple[str, int, int]] = field(default_factory=OrderedDict)
    """Adapter name → (file, mtime_ns, size) of what was loaded, to notice a replaced file."""


def adapter_name(lora: str) -> str:
    """A PEFT-safe adapter name for LoRA ``lora`` (PEFT names become module attribute keys)."""
    digest = hashlib.sha256(lora.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', lora)}_{digest}"


def _identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def activate(pipe: Any, adapters: AdapterSet, loras: Sequence[tuple[LoraRef, Path]]) -> None:
    """Make exactly ``loras`` (each with its scale) active on ``pipe``; load what is missing."""
    wanted = [(ref, path) for ref, path in loras if ref.scale != 0]
    if not wanted:
        if adapters.loaded:
            pipe.disable_lora()
        return
    names = []
    for ref, path in wanted:
        name = adapter_name(ref.name)
        identity = _identity(path)
        if adapters.loaded.get(name) != identity:
            if name in adapters.loaded:  # the file was replaced: load the new one
                pipe.delete_adapters(name)
                del adapters.loaded[name]
            _load(pipe, ref.name, name, path)
            adapters.loaded[name] = identity
        adapters.loaded.move_to_end(name)
        names.append(name)
    for old in list(adapters.loaded):
        if len(adapters.loaded) <= max(adapters.capacity, len(names)):
            break
        if old not in names:
            pipe.delete_adapters(old)
            del adapters.loaded[old]
            log.info("LoRA adapter %s unloaded (cache holds %s)", old, adapters.capacity)
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[ref.scale for ref, _ in wanted])


def _load(pipe: Any, lora: str, name: str, path: Path) -> None:
    log.info("loading LoRA %r from %s", lora, path)
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except Exception as exc:
        with contextlib.suppress(Exception):  # leave no half-loaded adapter behind
            pipe.delete_adapters(name)
        raise AdapterError(
            f"LoRA {lora!r} ({path.name}) does not fit this model (made for another model, or not "
            f"a LoRA file): {exc.__class__.__name__}: {exc}"
        ) from exc
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise AdapterError(
            f"LoRA {lora!r} ({path.name}) matches no layer of this model: it was made for another model"
        )
