"""Speed options applied to a loaded pipeline, through diffusers' own switches.

- ``fuse_qkv``: one matmul for the query, key and value projections of every attention
  (``fuse_qkv_projections``). ``None`` (the default) fuses on CUDA when the server has no LoRA
  directories: a fused projection would hide the per-projection LoRA layers.
- ``compile``: regional ``torch.compile`` of the transformer's repeated blocks
  (``compile_repeated_blocks``): each block compiles once and is reused by all of them.
  ``None`` (the default) compiles on CUDA (see :func:`auto_compile`); the kernels are cached on
  disk in ``compile_cache_dir`` and :mod:`fluxserve.engines.warmup` compiles them at load time
  for ``warmup_sizes``.
- ``channels_last``: the VAE in channels-last memory layout (CUDA).
- ``cache``: opt-in, lossy step caching (``fbcache``, ``magcache``, ``taylorseer``) with its
  threshold, through ``transformer.enable_cache`` and diffusers' cache configs, on the
  pipelines where each runs (:data:`CACHE_PIPELINES`: FLUX.1's ``FluxPipeline`` for all three;
  FLUX.2 klein for TaylorSeer only, as diffusers 0.42's First Block Cache fails on klein and
  MagCache has calibrated ratios for FLUX.1 only).
- ``attention_backend``: a diffusers attention backend (``flash``, ``_native_cudnn`` ...).

Transformer quantization ``auto`` (the default) is resolved by :func:`auto_quantize`: torchao
float8 (dynamic activations, float8 weights) on CUDA GPUs that have fp8 tensor cores, else none.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fluxserve.engines.memory import Quantize, quantization_config

log = logging.getLogger("fluxserve.engine")

StepCache = Literal["none", "fbcache", "magcache", "taylorseer"]
QuantizeSetting = Literal["auto", "none", "fp8", "int8", "nf4"]
"""A configured quantization: ``auto`` or one of :data:`~fluxserve.engines.memory.Quantize`."""
FP8_CAPABILITY = (8, 9)
"""CUDA compute capability with fp8 tensor cores (Ada, Hopper and later)."""
OFFLOAD_MODES = ("group_offload", "sequential_offload")
"""Memory modes whose hooks move weights inside the transformer blocks (no automatic compile)."""
CACHE_PIPELINES: dict[str, tuple[str, ...]] = {
    "fbcache": ("FluxPipeline",),
    "magcache": ("FluxPipeline",),
    "taylorseer": ("FluxPipeline", "Flux2KleinPipeline"),
}
"""Pipelines that wrap each denoiser call in ``cache_context`` (what the step caches need)."""


@dataclass(frozen=True)
class SpeedOptions:
    """How one pipeline is sped up (see the module docs)."""

    fuse_qkv: bool | None = None
    compile: bool | None = None
    channels_last: bool | None = None
    cache: StepCache = "none"
    cache_threshold: float | None = None
    attention_backend: str | None = None
    warmup_sizes: tuple[str, ...] = ()
    """``WIDTHxHEIGHT`` sizes generated once at load time when compiled (see the warmup module)."""
    compile_cache_dir: str | None = None
    """Where inductor and triton keep compiled kernels between restarts (None: torch's default)."""


@dataclass(frozen=True)
class Choice:
    """An automatic choice and why it was made (for the load log)."""

    value: Any
    reason: str


def auto_compile(
    setting: bool | None,
    device_type: str,
    has_loras: bool,
    memory_mode: str = "gpu",
    step_cache: bool = False,
) -> Choice:
    """Whether to compile: ``setting`` when given, else on for CUDA unless requests may name
    LoRAs (a new adapter changes the compiled blocks: a user would wait for a recompile), an
    offload mode moves weights inside the blocks, or a step cache is on (its hooks decide per
    step whether blocks run, which breaks the compiled graphs). ``Choice.value`` is a bool."""
    if setting is not None:
        return Choice(setting, "as configured")
    if step_cache:
        return Choice(False, "auto: off with a step cache (its hooks break the blocks' compiled graphs)")
    if device_type != "cuda":
        return Choice(False, f"auto: off on {device_type.upper()} (compile time outweighs the gain)")
    if has_loras:
        return Choice(False, "auto: off with lora_dirs (each new LoRA set would recompile the blocks)")
    if memory_mode in OFFLOAD_MODES:
        return Choice(False, f"auto: off with memory = '{memory_mode}' (its hooks move the blocks' weights)")
    return Choice(True, "auto: on for CUDA")


def auto_quantize(
    setting: QuantizeSetting,
    device_type: str,
    capability: tuple[int, int] | None,
    torchao: bool,
    has_loras: bool = False,
    gguf: bool = False,
) -> Choice:
    """The transformer quantization to load with: ``setting`` unless it is ``auto``; ``auto`` is
    ``fp8`` (torchao float8 dynamic activation + weight) on a CUDA device of compute capability
    8.9+ with torchao importable, else ``none``. ``Choice.value`` is ``"fp8-dynamic"`` for that
    automatic fp8 (an explicit ``fp8`` keeps its float8 weight-only config), else a
    :data:`~fluxserve.engines.memory.Quantize`. Pure: the device facts are passed in."""
    if setting != "auto":
        return Choice(setting, "as configured")
    if gguf:
        return Choice("none", "auto: none, the GGUF file is quantized already")
    if device_type != "cuda":
        return Choice("none", f"auto: none on {device_type.upper()} (fp8 needs CUDA)")
    if has_loras:
        return Choice("none", "auto: none with lora_dirs (LoRA layers are not applied over fp8 weights)")
    if capability is None or tuple(capability) < FP8_CAPABILITY:
        cc = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        return Choice("none", f"auto: none, compute capability {cc} has no fp8 tensor cores (8.9+)")
    if not torchao:
        return Choice("none", "auto: none, torchao is not installed (pip install torchao for fp8)")
    return Choice(
        "fp8-dynamic",
        f"auto: fp8 on compute capability {capability[0]}.{capability[1]} with torchao "
        "(float8 dynamic activations and weights)",
    )


def choose_quantize(setting: QuantizeSetting, device: torch.device, has_loras: bool, gguf: bool) -> Choice:
    """:func:`auto_quantize` with the facts of ``device`` and this environment."""
    capability = None
    if device.type == "cuda" and setting == "auto":
        capability = torch.cuda.get_device_capability(device)
    torchao = importlib.util.find_spec("torchao") is not None
    return auto_quantize(setting, device.type, capability, torchao, has_loras, gguf)


def quantize_bytes_kind(choice: Choice) -> Quantize:
    """The :data:`~fluxserve.engines.memory.Quantize` a choice takes in memory (for planning)."""
    return "fp8" if choice.value == "fp8-dynamic" else choice.value  # type: ignore[no-any-return]


def transformer_quantization(choice: Choice, device: torch.device, dtype: torch.dtype) -> Any | None:
    """The diffusers quantization config for a :func:`auto_quantize` choice (None: none)."""
    if choice.value != "fp8-dynamic":
        return quantization_config(choice.value, device, dtype)
    from diffusers import TorchAoConfig
    from torchao.quantization import (  # type: ignore[import-not-found]
        Float8DynamicActivationFloat8WeightConfig,
    )

    return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig())


def use_compile_cache(directory: str | Path) -> Path:
    """Keep inductor's and triton's compiled kernels in ``directory`` so that a restart reuses
    them (inductor's FX-graph and AOTAutograd caches are on by default; they live under its
    cache dir). Torch reads these variables when it compiles, so they are set here, at engine
    start, before the first compile: this is configuration handed to torch, not settings read
    from the environment (those are read only by :mod:`fluxserve.settings`)."""
    path = Path(directory).expanduser().resolve()
    (path / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    return path


def _cache_config(cache: StepCache, threshold: float | None, steps: int) -> Any:
    import diffusers

    if cache == "fbcache":
        return diffusers.FirstBlockCacheConfig(threshold=0.05 if threshold is None else threshold)
    if cache == "magcache":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        # MagCache skips steps by per-model magnitude ratios; diffusers ships FLUX.1's.
        kwargs: dict[str, Any] = {"num_inference_steps": steps, "mag_ratios": FLUX_MAG_RATIOS}
        if threshold is not None:
            kwargs["threshold"] = threshold
        return diffusers.MagCacheConfig(**kwargs)
    if cache == "taylorseer":
        # The threshold is the refresh interval here: full computation every N steps.
        interval = 5 if threshold is None else max(1, round(threshold))
        return diffusers.TaylorSeerCacheConfig(cache_interval=interval)
    raise ValueError(f"unknown cache {cache!r}: use none, fbcache, magcache or taylorseer")


def apply_speed(
    pipe: Any, options: SpeedOptions, device: torch.device, has_loras: bool, steps: int = 28
) -> list[str]:
    """Apply ``options`` to ``pipe``; returns what was switched on (for the load log)."""
    applied: list[str] = []
    transformer = pipe.transformer
    fuse = options.fuse_qkv if options.fuse_qkv is not None else device.type == "cuda" and not has_loras
    if fuse:
        if has_loras:
            raise ValueError("fuse_qkv hides the LoRA layers of the attention projections: turn it off")
        transformer.fuse_qkv_projections()
        applied.append("fused QKV")
    if options.channels_last if options.channels_last is not None else device.type == "cuda":
        pipe.vae.to(memory_format=torch.channels_last)
        applied.append("channels-last VAE")
    if options.attention_backend:
        transformer.set_attention_backend(options.attention_backend)
        applied.append(f"attention {options.attention_backend}")
    if options.cache != "none":
        supported = CACHE_PIPELINES[options.cache]
        name = type(pipe).__name__
        if name not in supported:
            others = [c for c, pipes in CACHE_PIPELINES.items() if name in pipes]
            raise ValueError(
                f"cache = '{options.cache}' runs on {', '.join(supported)} here; {name} does not: "
                f"use cache = {' or '.join(repr(c) for c in ['none', *others])} for this model"
            )
        transformer.enable_cache(_cache_config(options.cache, options.cache_threshold, steps))
        applied.append(f"{options.cache} step cache")
    compile_on = options.compile
    if compile_on is None:
        compile_on = auto_compile(None, device.type, has_loras).value
    if compile_on:
        if options.compile_cache_dir:
            cache = use_compile_cache(options.compile_cache_dir)
            applied.append(f"compile cache in {cache}")
        # dynamic=None (torch's default): each shape first compiles a static graph; a second
        # shape of the same block recompiles once with the changed sizes made dynamic, and that
        # graph then serves every further size (see the warmup module and docs/models.md#speed).
        # A step cache's hooks break the graph: compile around them (explicit compile only).
        transformer.compile_repeated_blocks(fullgraph=options.cache == "none")
        applied.append("regional torch.compile")
    return applied
