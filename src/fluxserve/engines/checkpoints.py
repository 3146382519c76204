"""Where a catalog checkpoint name points, and how the models using it want it to run."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog
from fluxserve.engines.memory import MemoryMode, Quantize
from fluxserve.engines.sources import CheckpointSource
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
        quantize = cast(Quantize, entry.quantize if entry else settings.quantize)
        if name == BUILTIN_CHECKPOINT:
            from fluxserve.embedded import embedded_checkpoint

            shipped = embedded_checkpoint()
            if shipped is None:
                # A build without the trained weights still serves: a random tiny checkpoint.
                from fluxserve.embedded.builder import ensure_tiny_checkpoint

                shipped = ensure_tiny_checkpoint(settings.data_dir / "models")
            return CheckpointSource(str(shipped), memory=memory, quantize=quantize)
        return CheckpointSource(name, base=entry.base if entry else None, memory=memory, quantize=quantize)

    return resolve
