"""The two sides timed: plain diffusers as its documentation calls it, and fluxserve's engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from gpubench.cases import MODES, ModelCase, fp8_ok
from gpubench.timing import Timing, prompt, reference_image, sync, time_calls


def run_diffusers(
    case: ModelCase,
    ckpt: Path,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    warmup: int,
    runs: int,
) -> Timing:
    """Plain diffusers, as its documentation calls the pipeline."""
    import diffusers

    cls = getattr(diffusers, case.pipeline)
    t = time.perf_counter()
    pipe = cls.from_pretrained(str(ckpt), torch_dtype=dtype).to(device.type)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    load_s = time.perf_counter() - t
    width, height = size
    image = reference_image(size) if case.reference_image else None

    def call(i: int) -> Any:
        kwargs: dict[str, Any] = {}
        if image is not None:
            kwargs["image"] = image
            if size != (1024, 1024):  # the output area (default 1024^2), as fluxserve passes it
                kwargs["max_area"] = width * height
        return pipe(
            prompt=prompt(i),
            height=height,
            width=width,
            guidance_scale=case.guidance,
            num_inference_steps=case.steps,
            max_sequence_length=512,
            generator=torch.Generator("cpu").manual_seed(i),
            **kwargs,
        ).images[0]

    # The pipeline is freed when this returns (main calls free_memory after every case).
    warmup_s, seconds, peak, first = time_calls(call, device, warmup, runs)
    return Timing(load_s, warmup_s, seconds, peak, first)


def fast_quantize(device: torch.device) -> str:
    """The quantization of the ``fast`` modes: fluxserve's own CUDA default, ``auto``, where its
    Settings take it (the engine then picks fp8 dynamic where the GPU has fp8, none elsewhere);
    with an older Settings, ``fp8`` (weight-only) where the GPU has fp8, else ``none``."""
    from fluxserve.settings import Settings

    try:
        Settings(quantize="auto")
        return "auto"
    except Exception:
        return "fp8" if fp8_ok(device) else "none"


def mode_settings(
    mode: str,
    device: torch.device,
    ckpt: Path,
    data_dir: Path,
    size: tuple[int, int],
    compile_cache: Path | None = None,
) -> tuple[dict[str, Any], Any]:
    """fluxserve Settings values for ``mode`` on ``device`` (explicit values: they do not depend
    on the defaults of the day), and the Settings object. A compiled mode warms up at ``size``
    when the Settings have ``warmup_sizes`` (fluxserve then compiles at load time), and keeps
    its compiled kernels in ``compile_cache`` when given (default: under ``data_dir``)."""
    from fluxserve.settings import Settings

    values = dict(MODES[mode])
    if values["quantize"] == "fast":
        values["quantize"] = fast_quantize(device)
    if "warmup_sizes" in Settings.model_fields:
        values["warmup_sizes"] = [f"{size[0]}x{size[1]}"] if values["compile"] else []
    if compile_cache is not None and values["compile"]:
        values["compile_cache_dir"] = str(compile_cache)
    settings = Settings(
        default_checkpoint=str(ckpt),
        data_dir=data_dir,
        device=device.type,
        dtype="bfloat16" if device.type == "cuda" else "float32",
        memory="gpu" if device.type == "cuda" else "auto",
        **values,
    )
    return values, settings


def run_fluxserve(
    case: ModelCase,
    mode: str,
    ckpt: Path,
    device: torch.device,
    size: tuple[int, int],
    warmup: int,
    runs: int,
    data_dir: Path,
    compile_cache: Path | None = None,
) -> tuple[Timing, dict[str, Any], dict[str, Any]]:
    """fluxserve's engine loading ``ckpt`` through its own loader, in ``mode``."""
    from fluxserve.catalog import ModelCatalog
    from fluxserve.engines import EngineRequest
    from fluxserve.engines.checkpoints import checkpoint_resolver
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    values, settings = mode_settings(mode, device, ckpt, data_dir, size, compile_cache)
    catalog = ModelCatalog.from_settings(settings)
    engine = DiffusersFluxEngine(
        checkpoint_resolver(settings, catalog),
        settings.device,
        settings.dtype,
        prompt_cache_size=settings.prompt_cache_size,
    )
    t = time.perf_counter()
    engine.load(str(ckpt))
    sync(device)
    load_s = time.perf_counter() - t
    width, height = size
    images = [reference_image(size)] if case.reference_image else []

    def request(i: int) -> Any:
        return EngineRequest(
            checkpoint=str(ckpt),
            prompt=prompt(i),
            width=width,
            height=height,
            seed=i,
            steps=case.steps,
            guidance=case.guidance,
            images=list(images),
        )

    batch = settings.batch_size if "batch_size" in values else 1

    def call(i: int) -> Any:
        if batch > 1:  # call i runs requests i*batch .. i*batch+batch-1; image 0 is request i*batch
            return engine.generate_batch([request(i * batch + k) for k in range(batch)])[0][0]
        return engine.generate(request(i))[0]

    loaded = engine.loaded(str(ckpt))
    extra: dict[str, Any] = {"memory_mode": loaded.memory.mode if loaded else None}
    warmup_s, seconds, peak, first = time_calls(call, device, warmup, runs)
    if batch > 1:
        seconds = [s / batch for s in seconds]  # per image
        extra["batch_size"] = batch
    extra["prompt_cache_hits"] = engine.prompt_cache.hits
    return Timing(load_s, warmup_s, seconds, peak, first), values, extra
