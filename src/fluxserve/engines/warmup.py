"""Compile warm-up: a compiled checkpoint generates once per configured size while it loads, so
that ``torch.compile`` compiles before the server reports ready rather than on a user's request.

Each warm-up is a short generation (:data:`WARMUP_STEPS` steps: every compiled graph runs from
the first step on) through the same pipeline call a request makes: the checkpoint's own
guidance path (two-pass true CFG where the checkpoint uses it), the size fitted as the engine
fits it, the images decoded. Checkpoints that take input images also warm one edit per size
(one reference image of that size), and the first size is also generated as two images at
once, so that the batch dimension is compiled too (an OpenAI ``n > 1`` request, or a batch of
jobs, then compiles nothing).

Shape buckets: the transformer blocks are compiled with torch's default ``dynamic=None``. The
first shape a block sees compiles a graph specialised to it (the fastest kernels). A second
shape recompiles once with the dimensions that changed marked dynamic (dynamo's "automatic
dynamic shapes"), and that graph serves every further value of them without compiling again.
So with one warm-up size, the first request of another size waits for that one dynamic
recompile; with two shapes warmed (two sizes, or a size and an edit) the dynamic graph exists
before the server is ready and no size compiles on a request. The two-image run does the same
for the batch dimension: every ``n`` and batch size is served by the graph it compiles.
Compiled kernels are cached on
disk (see :func:`fluxserve.engines.speed.use_compile_cache`), so a restart mostly reads them
back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from fluxserve.engines.loader import LoadedPipeline
from fluxserve.engines.paired_guidance import true_cfg_pairing
from fluxserve.spec.geometry import fit_area

log = logging.getLogger("fluxserve.engine")

WARMUP_STEPS = 2
WARMUP_PROMPT = "a red cat on a blue square"
CFG_GUIDANCE = 4.0
"""Guidance of the warm-up on checkpoints guided by two passes (true CFG): above 1, so the
negative pass runs as it does for requests."""


@dataclass(frozen=True)
class WarmupRun:
    """What warming one size cost."""

    size: str
    seconds: float
    graphs: int
    """Graphs dynamo compiled during this warm-up."""
    cache_hits: int
    """Compiled graphs read back from the on-disk cache (inductor's FX-graph cache)."""
    cache_misses: int


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``."""
    width, _, height = size.lower().partition("x")
    return int(width), int(height)


def _counts() -> tuple[int, int, int]:
    from torch._dynamo.utils import counters

    return (
        counters["stats"]["unique_graphs"],
        counters["inductor"]["fxgraph_cache_hit"],
        counters["inductor"]["fxgraph_cache_miss"],
    )


def _generate(m: LoadedPipeline, width: int, height: int, edit: bool, images: int = 1) -> None:
    """One short generation of ``images`` images at ``width`` x ``height`` (the request's size,
    fitted as the engine fits it), text to image or an edit of one reference image."""
    if m.native_area:
        width, height = fit_area(width, height, m.native_area, m.multiple)
    else:
        width, height = width // m.multiple * m.multiple, height // m.multiple * m.multiple
    klein_base = not m.family.guidance_distilled and not getattr(m.pipe.config, "is_distilled", True)
    two_pass = m.true_cfg or klein_base
    guidance = CFG_GUIDANCE if two_pass else m.family.guidance
    kwargs: dict[str, Any] = dict(
        prompt=WARMUP_PROMPT,
        height=height,
        width=width,
        num_inference_steps=WARMUP_STEPS,
        guidance_scale=guidance,
        num_images_per_prompt=images,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(images)],
        max_sequence_length=m.max_sequence_length,
    )
    if m.true_cfg:
        kwargs["negative_prompt"] = ""
        kwargs["true_cfg_scale"] = guidance
    if edit:
        reference = Image.new("RGB", (width, height), (128, 128, 128))
        if m.family.native_references:
            kwargs["image"] = [reference]
        else:
            kwargs["image"] = reference
            kwargs["max_area"] = width * height
            if m.native_area:
                kwargs["_auto_resize"] = False
    # The shapes a run will compile for: true CFG runs its two passes as one batch
    with torch.inference_mode(), true_cfg_pairing(m.pipe.transformer, m.true_cfg, guidance):
        m.pipe(**kwargs)


def warm_up(m: LoadedPipeline, sizes: Sequence[str], checkpoint: str) -> list[WarmupRun]:
    """Generate once per size in ``sizes`` (``WIDTHxHEIGHT``) when ``m`` is compiled, logging
    the time and what was compiled per size; nothing when it is not compiled. Raises naming the
    size when a warm-up fails (the load fails with it)."""
    if not m.compiled or not sizes:
        return []
    runs = []
    for k, size in enumerate(sizes):
        width, height = parse_size(size)
        graphs, hits, misses = _counts()
        start = time.perf_counter()
        try:
            _generate(m, width, height, edit=False)
            if m.family.max_reference_images:
                _generate(m, width, height, edit=True)
            if k == 0:  # the batch dimension, once: its graph then serves every size and n
                _generate(m, width, height, edit=False, images=2)
        except Exception as exc:
            raise RuntimeError(
                f"compile warm-up at {size} failed ({exc.__class__.__name__}: {exc}); "
                "set compile = false to run uncompiled"
            ) from exc
        after = _counts()
        seconds = time.perf_counter() - start
        run = WarmupRun(size, seconds, after[0] - graphs, after[1] - hits, after[2] - misses)
        log.info(
            "compile warm-up %s of %s: %.1f s, %d graphs compiled (compile cache: %d hits, %d misses)",
            size,
            checkpoint,
            run.seconds,
            run.graphs,
            run.cache_hits,
            run.cache_misses,
        )
        runs.append(run)
    return runs
