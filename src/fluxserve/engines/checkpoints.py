"""Where a catalog checkpoint name points on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fluxserve.catalog import BUILTIN_CHECKPOINT
from fluxserve.settings import Settings


def checkpoint_resolver(settings: Settings) -> Callable[[str], Path]:
    """Map a catalog checkpoint name to a directory (building the built-in one if needed)."""

    def resolve(name: str) -> Path:
        if name == BUILTIN_CHECKPOINT:
            from fluxserve.embedded import embedded_checkpoint

            shipped = embedded_checkpoint()
            if shipped is not None:
                return shipped
            # A build without the trained weights still serves: a random tiny checkpoint.
            from fluxserve.embedded.builder import ensure_tiny_checkpoint

            return ensure_tiny_checkpoint(settings.data_dir / "models")
        path = Path(name).expanduser()
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"checkpoint {name!r} is not a diffusers pipeline directory (no model_index.json); "
                "point the model's 'checkpoint' setting at a local FLUX or FLUX Kontext checkpoint"
            )
        return path

    return resolve
