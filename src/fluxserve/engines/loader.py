"""Load one checkpoint into a ready pipeline: find its files, recognise its family, fit it to
the device (memory mode, quantization) and read fluxserve's own hints (``fluxserve.json``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fluxserve.engines.families import (
    FluxFamily,
    check_single_file_family,
    family_from_index,
    transformer_family,
)
from fluxserve.engines.memory import (
    MemoryChoice,
    apply_memory,
    free_device_bytes,
    plan_memory,
    quantized_bytes,
)
from fluxserve.engines.sources import CheckpointError, CheckpointSource, ResolvedCheckpoint, resolve
from fluxserve.engines.speed import (
    apply_speed,
    auto_compile,
    choose_quantize,
    quantize_bytes_kind,
    transformer_quantization,
)

log = logging.getLogger("fluxserve.engine")


@dataclass
class LoadedPipeline:
    """A pipeline ready to run, and how to drive it."""

    pipe: Any
    family: FluxFamily
    memory: MemoryChoice
    native_area: int | None
    """Pixels the checkpoint samples at (the embedded model); None: the requested size."""
    multiple: int
    max_sequence_length: int
    true_cfg: bool
    """Guided against the empty prompt (checkpoints without a guidance embedding)."""
    inpaint: Any = None
    """The inpainting pipeline over the same modules, made on the first masked edit."""
    compiled: bool = False
    """The transformer's blocks are compiled (the load warms them up, see the warmup module)."""
    prompt_grammar: str | None = None
    """The only prompts the checkpoint reads (the embedded model's ``scenes``); None: any."""


def _file_tensor_names(path: Path) -> list[str]:
    if path.suffix == ".gguf":
        from gguf import GGUFReader  # type: ignore[import-untyped]

        return [t.name for t in GGUFReader(str(path)).tensors]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def _stored_itemsize(path: Path) -> int:
    """Bytes per weight as stored in a safetensors file (from its first tensor)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
        stored = fh.get_slice(keys[0]).get_dtype() if keys else "BF16"
    return 4 if stored == "F32" else 1 if stored in ("F8_E4M3", "F8_E5M2", "I8", "U8") else 2


def component_bytes(files: ResolvedCheckpoint, dtype: torch.dtype, quantize: str) -> dict[str, int]:
    """Device bytes of each component in ``dtype`` (the transformer quantized), from file sizes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    index = json.loads((files.pipeline_dir / "model_index.json").read_text())
    needed: dict[str, int] = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or not (files.pipeline_dir / name).is_dir():
            continue
        weights = list((files.pipeline_dir / name).glob("*.safetensors"))
        if not weights or (name == "transformer" and files.transformer_file is not None):
            continue
        stored = _stored_itemsize(weights[0])
        size = sum(w.stat().st_size for w in weights) * itemsize // stored
        needed[name] = quantized_bytes(size, itemsize, quantize) if name == "transformer" else size  # type: ignore[arg-type]
    if files.transformer_file is not None:
        file = files.transformer_file
        if file.suffix == ".gguf":
            needed["transformer"] = file.stat().st_size
        else:
            size = file.stat().st_size * itemsize // _stored_itemsize(file)
            needed["transformer"] = quantized_bytes(size, itemsize, quantize)  # type: ignore[arg-type]
    return needed


def _load_transformer_file(
    file: Path, base: Path, family: FluxFamily, dtype: torch.dtype, quant: Any | None
) -> Any:
    import diffusers

    check_single_file_family(transformer_family(_file_tensor_names(file)), family)
    if not (base / "transformer" / "config.json").is_file():
        raise CheckpointError(
            f"missing component 'transformer/config.json' in base {base}: the single file's "
            "architecture is read from it"
        )
    cls = getattr(diffusers, family.transformer)
    if file.suffix == ".gguf":
        from diffusers import GGUFQuantizationConfig

        quant = GGUFQuantizationConfig(compute_dtype=dtype)
    return cls.from_single_file(
        str(file),
        config=str(base),
        subfolder="transformer",
        torch_dtype=dtype,
        local_files_only=True,
        quantization_config=quant,
    )


def load_pipeline(
    source: CheckpointSource, device: torch.device, dtype: torch.dtype, has_loras: bool = False
) -> LoadedPipeline:
    """Load ``source`` onto ``device`` and apply its speed options (``has_loras``: requests may
    name LoRAs, so nothing may hide their layers); raises with the path and the cause when it
    cannot."""
    import diffusers

    files = resolve(source)
    index = json.loads((files.pipeline_dir / "model_index.json").read_text())
    family = family_from_index(index.get("_class_name"))
    gguf = files.transformer_file is not None and files.transformer_file.suffix == ".gguf"
    quantize = choose_quantize(source.quantize, device, has_loras, gguf)
    log.info("quantize = '%s' for %s (%s)", quantize.value, source.checkpoint, quantize.reason)
    needed = component_bytes(files, dtype, quantize_bytes_kind(quantize))
    memory = plan_memory(source.memory, free_device_bytes(device), needed, device.type)
    log.info(
        "loading %s %s on %s: memory = '%s' (%s)",
        family.pipeline,
        files.transformer_file or files.pipeline_dir,
        device,
        memory.mode,
        memory.reason,
    )
    if gguf and quantize.value != "none":
        raise CheckpointError(
            f"{files.transformer_file} is a GGUF file, quantized already: leave quantize = 'none' for it"
        )
    quant = transformer_quantization(quantize, device, dtype)
    components: dict[str, Any] = {}
    if files.transformer_file is not None:
        components["transformer"] = _load_transformer_file(
            files.transformer_file, files.pipeline_dir, family, dtype, quant
        )
    elif quant is not None:
        cls = getattr(diffusers, family.transformer)
        components["transformer"] = cls.from_pretrained(
            str(files.pipeline_dir),
            subfolder="transformer",
            torch_dtype=dtype,
            quantization_config=quant,
            local_files_only=True,
        )
    pipeline_cls = getattr(diffusers, family.pipeline)
    pipe = pipeline_cls.from_pretrained(
        str(files.pipeline_dir), dtype=dtype, local_files_only=True, **components
    )
    apply_memory(pipe, memory.mode, device)
    compile_on = auto_compile(
        source.speed.compile, device.type, has_loras, memory.mode, step_cache=source.speed.cache != "none"
    )
    log.info("compile = %s for %s (%s)", compile_on.value, source.checkpoint, compile_on.reason)
    speed = replace(source.speed, compile=compile_on.value)
    applied = apply_speed(pipe, speed, device, has_loras, steps=family.steps)
    if applied:
        log.info("speed options for %s: %s", files.transformer_file or files.pipeline_dir, ", ".join(applied))
    pipe.set_progress_bar_config(disable=True)
    extra_path = files.pipeline_dir / "fluxserve.json"
    extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
    return LoadedPipeline(
        pipe=pipe,
        family=family,
        memory=memory,
        native_area=extra.get("native_area"),
        multiple=pipe.vae_scale_factor * 2,
        max_sequence_length=int(extra.get("max_sequence_length", family.max_sequence_length)),
        # Checkpoints trained with caption dropout and no guidance embedding (the embedded
        # model) are guided the classic way: against the empty prompt.
        true_cfg=bool(extra.get("true_cfg", False)),
        compiled=compile_on.value,
        prompt_grammar=extra.get("prompt_grammar"),
    )
