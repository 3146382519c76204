"""What is benchmarked: the models, fluxserve's modes, the default plan and its estimates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MODELS = ("flux1-dev", "flux1-kontext-dev", "flux1-schnell", "flux2-klein-4b")


@dataclass(frozen=True)
class ModelCase:
    """One model as benchmarked: its pipeline, how diffusers' docs call it, its steps."""

    name: str
    pipeline: str
    steps: int
    guidance: float
    reference_image: bool = False
    """Kontext: the request edits a 1024x1024 input image (twice the image tokens)."""


CASES = {
    "flux1-dev": ModelCase("flux1-dev", "FluxPipeline", 28, 3.5),
    "flux1-kontext-dev": ModelCase("flux1-kontext-dev", "FluxKontextPipeline", 28, 2.5, True),
    "flux1-schnell": ModelCase("flux1-schnell", "FluxPipeline", 4, 0.0),
    "flux2-klein-4b": ModelCase("flux2-klein-4b", "Flux2KleinPipeline", 4, 1.0),
}

MODES: dict[str, dict[str, Any]] = {
    # fluxserve with every speed option off: its own overhead over plain diffusers.
    "bf16": dict(fuse_qkv=False, compile=False, channels_last=False, quantize="none", cache="none"),
    # fluxserve's speed options on CUDA. quantize "fast": the CUDA default of the fluxserve in
    # the tree ("auto" once Settings has it: fp8 dynamic activations and weights where the GPU
    # has fp8; else an explicit "fp8", weight-only) - see fast_quantize().
    "fast": dict(fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="none"),
    # Lossy: First Block Cache (diffusers' FirstBlockCacheConfig, fluxserve's default threshold)
    # over "fast" without compile: fluxserve compiles the blocks with fullgraph=True, which cannot
    # trace diffusers' FBC hook (torch.compiler.disable'd: "Skip inlining ... _should_compute_
    # remaining_blocks"), seen on the CPU with torch 2.13 / diffusers 0.42.
    "fbcache": dict(fuse_qkv=True, compile=False, channels_last=True, quantize="fast", cache="fbcache"),
    # The same with compile: the engine compiles around the cache's hooks (fullgraph off).
    "fast+fbcache": dict(fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="fbcache"),
    # Request batching: 4 requests (different prompts and seeds) in one pipeline call through
    # the engine's generate_batch; seconds_median is per image. Does batching pay on this GPU?
    "fast+batch4": dict(
        fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="none", batch_size=4
    ),
    "bf16+batch4": dict(
        fuse_qkv=False, compile=False, channels_last=False, quantize="none", cache="none", batch_size=4
    ),
}
LOSSY_MODES = {"fbcache", "fast+fbcache"}

# The default plan, most important first: (model, mode). "diffusers" is the baseline. FLUX.1
# Kontext has no step cache in fluxserve (its pipeline does not mark denoiser calls), and at 4
# steps a step cache has nothing to skip, so fbcache runs for dev only.
PLAN: list[tuple[str, str]] = [
    ("flux1-dev", "diffusers"),
    ("flux1-dev", "fast"),
    ("flux1-kontext-dev", "diffusers"),
    ("flux1-kontext-dev", "fast"),
    ("flux1-dev", "fbcache"),
    ("flux1-dev", "bf16"),
    ("flux2-klein-4b", "diffusers"),
    ("flux2-klein-4b", "fast"),
    ("flux1-schnell", "diffusers"),
    ("flux1-schnell", "fast"),
    ("flux1-schnell", "fast+batch4"),
]
# Seconds each (model, mode) takes on one H100, load + warm-up + runs (estimates for the budget
# guard; a checkpoint build adds BUILD_ESTIMATE_S).
ESTIMATE_S = {
    ("flux1-dev", "diffusers"): 70,
    ("flux1-dev", "bf16"): 70,
    ("flux1-dev", "fast"): 120,
    ("flux1-dev", "fbcache"): 60,
    ("flux1-dev", "fast+fbcache"): 80,
    ("flux1-kontext-dev", "diffusers"): 100,
    ("flux1-kontext-dev", "fast"): 110,
    ("flux1-schnell", "diffusers"): 30,
    ("flux1-schnell", "fast"): 70,
    ("flux1-schnell", "fast+batch4"): 60,
    ("flux2-klein-4b", "diffusers"): 25,
    ("flux2-klein-4b", "fast"): 60,
}
BUILD_ESTIMATE_S = {"flux1-dev": 70, "flux1-kontext-dev": 70, "flux1-schnell": 70, "flux2-klein-4b": 35}
SERVER_ESTIMATE_S = 150


def fp8_ok(device: torch.device) -> bool:
    """Whether fluxserve's quantize = 'fp8' can run here (CUDA 8.9+ and torchao importable)."""
    import importlib.util

    return (
        device.type == "cuda"
        and torch.cuda.get_device_capability(device) >= (8, 9)
        and importlib.util.find_spec("torchao") is not None
    )
