"""Where a catalog checkpoint name points, and how the models using it want it to run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog
from fluxserve.engines.families import checkpoint_defaults
from fluxserve.engines.memory import MemoryMode
from fluxserve.engines.sources import CheckpointSource, is_repo_id, is_single_file
from fluxserve.engines.speed import QuantizeSetting, SpeedOptions
from fluxserve.settings import Settings


def checkpoint_resolver(
    settings: Settings, catalog: ModelCatalog | None = None
) -> Callable[[str], CheckpointSource]:
    """Map a catalog checkpoint name to a :class:`CheckpointSource` (building the built-in one if
    needed), with the ``base``, ``memory`` and ``quantize`` of the first model that uses it."""
    catalog = catalog or ModelCatalog.from_settings(settings)

    def resolve(name: str) -> CheckpointSource:
        entry = next((e for e in catalog if e.checkpoint == name), None)
        memory = cast(MemoryMode, entry.memory if entry else settings.memory)
        quantize = cast(QuantizeSetting, entry.quantize if entry else settings.quantize)
        speed = speed_options(settings, entry.id if entry else None)
        if name == BUILTIN_CHECKPOINT:
            from fluxserve.embedded import embedded_checkpoint

            shipped = embedded_checkpoint()
            if shipped is None:
                # A build without the trained weights still serves: a random tiny checkpoint.
                from fluxserve.embedded.builder import ensure_tiny_checkpoint

                shipped = ensure_tiny_checkpoint(settings.data_dir / "models")
            return CheckpointSource(str(shipped), memory=memory, quantize=quantize, speed=speed)
        return CheckpointSource(
            name, base=entry.base if entry else None, memory=memory, quantize=quantize, speed=speed
        )

    return resolve


def speed_options(settings: Settings, model_id: str | None) -> SpeedOptions:
    """The speed options of a model: the top-level settings, its own ``cache`` and
    ``warmup_sizes`` over them; the compile cache in ``compile_cache_dir`` (default
    ``<data_dir>/compile-cache``)."""
    own = settings.models.get(model_id) if model_id else None
    sizes = own.warmup_sizes if own and own.warmup_sizes is not None else settings.warmup_sizes
    return SpeedOptions(
        fuse_qkv=settings.fuse_qkv,
        compile=settings.compile,
        channels_last=settings.channels_last,
        cache=(own.cache if own and own.cache else settings.cache),
        cache_threshold=(
            own.cache_threshold if own and own.cache_threshold is not None else settings.cache_threshold
        ),
        attention_backend=settings.attention_backend,
        warmup_sizes=tuple(sizes),
        compile_cache_dir=str(settings.compile_cache_dir or settings.data_dir / "compile-cache"),
    )


def _local_pipeline_dir(name: str) -> Path | None:
    """A pipeline directory already on this machine (a path, or a hub repo in the local cache)."""
    if is_repo_id(name):
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name, allow_patterns=["*.json"], local_files_only=True))
        except Exception:  # not downloaded yet: known once the model has loaded
            return None
    else:
        path = Path(name).expanduser()
    return path if (path / "model_index.json").is_file() else None


def local_checkpoint_defaults(source: CheckpointSource) -> tuple[int, float] | None:
    """(steps, guidance) of a checkpoint from its files on this machine, without loading or
    downloading anything; None when they are not here yet or cannot be read."""
    single = is_single_file(source.checkpoint)
    directory = _local_pipeline_dir(source.base if single and source.base else source.checkpoint)
    if directory is None:
        return None
    try:
        keys = None
        file = Path(source.checkpoint).expanduser()
        if single and file.suffix == ".safetensors" and file.is_file():
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as fh:
                keys = list(fh.keys())
        return checkpoint_defaults(directory, keys)
    except Exception as exc:  # the load reports what is wrong with it
        logging.getLogger("fluxserve.engine").debug("no defaults for %s: %s", source.checkpoint, exc)
        return None


def apply_checkpoint_defaults(settings: Settings, catalog: ModelCatalog) -> None:
    """Give each model the steps and guidance of its checkpoint's family (see
    :func:`~fluxserve.engines.families.checkpoint_defaults`) where its files are already here;
    the built-in checkpoint declares its own (see the catalog)."""
    resolve = checkpoint_resolver(settings, catalog)
    for checkpoint in sorted(catalog.checkpoints() - {BUILTIN_CHECKPOINT}):
        defaults = local_checkpoint_defaults(resolve(checkpoint))
        if defaults is not None:
            catalog.apply_checkpoint_defaults(checkpoint, *defaults, settings)
