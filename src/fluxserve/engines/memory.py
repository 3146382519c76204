"""Memory modes and transformer quantization: how a pipeline fits the device it runs on.

:func:`plan_memory` is a pure function (free bytes, bytes per component, device kind in; a mode
and the reason out) so that the choice can be tested with given figures; :func:`apply_memory`
and :func:`quantization_config` do the work with diffusers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

MemoryMode = Literal["auto", "gpu", "model_offload", "group_offload", "sequential_offload"]
Quantize = Literal["none", "fp8", "int8", "nf4"]

MODES_FASTEST_FIRST: tuple[MemoryMode, ...] = ("gpu", "model_offload", "group_offload", "sequential_offload")
GIB = 1024**3
HEADROOM_BYTES = 3 * GIB
"""Working memory beyond the weights: activations, attention and the VAE decode at ~1 MP."""


class NotEnoughMemoryError(RuntimeError):
    """No memory mode (or not the one asked for) fits the device's free memory."""


@dataclass(frozen=True)
class MemoryChoice:
    """The mode a pipeline runs in, and why."""

    mode: MemoryMode
    reason: str


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def peak_bytes(mode: MemoryMode, needed: Mapping[str, int], headroom: int = HEADROOM_BYTES) -> int:
    """Device memory a mode needs at its peak, from the bytes of each component.

    ``gpu`` holds every component; ``model_offload`` the largest one at a time;
    ``group_offload`` (leaf level, streamed) about a tenth of the largest; ``sequential_offload``
    one layer at a time (only the working memory counts).
    """
    largest = max(needed.values(), default=0)
    if mode == "gpu":
        return sum(needed.values()) + headroom
    if mode == "model_offload":
        return largest + headroom
    if mode == "group_offload":
        return largest // 10 + headroom
    return headroom


def plan_memory(
    requested: MemoryMode,
    free_bytes: int | None,
    needed: Mapping[str, int],
    device_kind: str,
    headroom: int = HEADROOM_BYTES,
) -> MemoryChoice:
    """The memory mode to run in: ``requested``, or for ``auto`` the fastest that fits.

    ``free_bytes`` is the device's free memory (None: unknown, taken as enough), ``needed`` the
    bytes of each component in the dtype it will run in. On a CPU every mode is the same (host
    memory), so the answer is ``gpu`` (everything on the device). Raises
    :class:`NotEnoughMemoryError` naming what is needed, what is free and which mode would fit.
    """
    total = sum(needed.values())
    if device_kind == "cpu":
        return MemoryChoice("gpu", f"on the CPU every component stays in host memory ({_gib(total)})")
    if free_bytes is None:
        mode = "gpu" if requested == "auto" else requested
        return MemoryChoice(mode, "the device's free memory is unknown")
    fitting = [m for m in MODES_FASTEST_FIRST if peak_bytes(m, needed, headroom) <= free_bytes]
    if requested != "auto":
        need = peak_bytes(requested, needed, headroom)
        if need <= free_bytes:
            return MemoryChoice(
                requested, f"as configured; needs about {_gib(need)}, {_gib(free_bytes)} free"
            )
        hint = f"memory = '{fitting[0]}' would fit" if fitting else "no memory mode fits"
        raise NotEnoughMemoryError(
            f"not enough memory for memory = '{requested}': it needs about {_gib(need)} "
            f"and the device has {_gib(free_bytes)} free; {hint}"
        )
    if not fitting:
        raise NotEnoughMemoryError(
            f"not enough memory: the weights take {_gib(total)} and even memory = "
            f"'sequential_offload' needs about {_gib(headroom)}, but the device has "
            f"{_gib(free_bytes)} free"
        )
    best = fitting[0]
    need = peak_bytes(best, needed, headroom)
    why = {
        "gpu": "every component fits on the device",
        "model_offload": f"all components ({_gib(total)}) do not fit, the largest one at a time does",
        "group_offload": "the largest component does not fit whole, it fits streamed in groups",
        "sequential_offload": "only layer-by-layer offloading fits",
    }[best]
    return MemoryChoice(best, f"{why}: needs about {_gib(need)}, {_gib(free_bytes)} free")


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device for this process, or None for other devices: what the
    driver reports free, and no more than the room left under a cap set with
    ``torch.cuda.set_per_process_memory_fraction`` (the driver does not see that cap; the
    allocator raises out-of-memory past it)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    if fraction < 1.0:
        free = min(free, max(0, int(total * fraction) - torch.cuda.memory_reserved(device)))
    return int(free)


def apply_memory(pipe: Any, mode: MemoryMode, device: torch.device) -> None:
    """Place ``pipe`` on ``device`` according to ``mode`` (a mode from :func:`plan_memory`)."""
    if mode == "gpu" or device.type == "cpu":
        pipe.to(device)
        return
    if importlib.util.find_spec("accelerate") is None and mode in ("model_offload", "sequential_offload"):
        raise RuntimeError(f"memory = '{mode}' needs the 'accelerate' package (pip install accelerate)")
    if mode == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group_offload":
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=True)
    else:  # pragma: no cover - plan_memory never returns auto
        raise ValueError(f"unknown memory mode {mode!r}")


def quantization_config(quantize: Quantize, device: torch.device, dtype: torch.dtype) -> Any | None:
    """The diffusers quantization config for the transformer, or None for ``none``.

    Raises RuntimeError naming what is needed when the library or the device cannot do it.
    """
    if quantize == "none":
        return None
    if quantize in ("fp8", "nf4") and device.type != "cuda":
        raise RuntimeError(
            f"quantize = '{quantize}' needs a CUDA GPU"
            + (" with compute capability 8.9+ (Ada, Hopper) and torchao" if quantize == "fp8" else "")
            + (" and bitsandbytes" if quantize == "nf4" else "")
            + f"; this server runs on {device.type.upper()}: use quantize = 'none'"
            + (" or 'int8'" if quantize == "fp8" else "")
        )
    if quantize in ("fp8", "int8"):
        if importlib.util.find_spec("torchao") is None:
            raise RuntimeError(f"quantize = '{quantize}' needs torchao (pip install torchao)")
        if quantize == "fp8" and torch.cuda.get_device_capability(device) < (8, 9):
            raise RuntimeError("quantize = 'fp8' needs compute capability 8.9+ (Ada, Hopper); try 'int8'")
        from diffusers import TorchAoConfig
        from torchao.quantization import (  # type: ignore[import-not-found]
            Float8WeightOnlyConfig,
            Int8WeightOnlyConfig,
        )

        return TorchAoConfig(Float8WeightOnlyConfig() if quantize == "fp8" else Int8WeightOnlyConfig())
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("quantize = 'nf4' needs bitsandbytes (pip install bitsandbytes)")
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def quantized_bytes(nbytes: int, itemsize: int, quantize: Quantize) -> int:
    """Bytes of a component of ``nbytes`` (at ``itemsize`` bytes per weight) once quantized."""
    per_weight = {"none": float(itemsize), "fp8": 1.0, "int8": 1.0, "nf4": 0.56}[quantize]
    return int(nbytes / itemsize * per_weight)
