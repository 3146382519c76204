"""Speed options applied to a loaded pipeline, through diffusers' own switches.

- ``fuse_qkv``: one matmul for the query, key and value projections of every attention
  (``fuse_qkv_projections``). ``None`` (the default) fuses on CUDA when the server has no LoRA
  directories: a fused projection would hide the per-projection LoRA layers.
- ``compile``: regional ``torch.compile`` of the transformer's repeated blocks
  (``compile_repeated_blocks``): each block compiles once and is reused by all of them.
- ``channels_last``: the VAE in channels-last memory layout (CUDA).
- ``cache``: opt-in, lossy step caching (``fbcache``, ``magcache``, ``taylorseer``) with its
  threshold, through ``transformer.enable_cache`` and diffusers' cache configs.
- ``attention_backend``: a diffusers attention backend (``flash``, ``_native_cudnn`` ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

log = logging.getLogger("fluxserve.engine")

StepCache = Literal["none", "fbcache", "magcache", "taylorseer"]
CACHE_PIPELINES = ("FluxPipeline", "Flux2KleinPipeline")
"""Pipelines that wrap each denoiser call in ``cache_context`` (what the step caches need)."""


@dataclass(frozen=True)
class SpeedOptions:
    """How one pipeline is sped up (see the module docs)."""

    fuse_qkv: bool | None = None
    compile: bool = False
    channels_last: bool | None = None
    cache: StepCache = "none"
    cache_threshold: float | None = None
    attention_backend: str | None = None


def _cache_config(cache: StepCache, threshold: float | None, steps: int) -> Any:
    import diffusers

    if cache == "fbcache":
        return diffusers.FirstBlockCacheConfig(threshold=0.05 if threshold is None else threshold)
    if cache == "magcache":
        kwargs: dict[str, Any] = {"num_inference_steps": steps}
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
        if type(pipe).__name__ not in CACHE_PIPELINES:
            raise ValueError(
                f"cache = '{options.cache}' needs a pipeline that marks its denoiser calls for "
                f"diffusers' step caches ({', '.join(CACHE_PIPELINES)}); {type(pipe).__name__} does "
                "not: use cache = 'none' for this model"
            )
        transformer.enable_cache(_cache_config(options.cache, options.cache_threshold, steps))
        applied.append(f"{options.cache} step cache")
    if options.compile:
        transformer.compile_repeated_blocks(fullgraph=True)
        applied.append("regional torch.compile")
    return applied
