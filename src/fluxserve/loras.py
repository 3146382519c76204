"""The LoRA library: adapter names that requests may use, and the files behind them.

A name is the stem of a ``.safetensors`` file directly inside one of the configured
directories (``lora_dirs``); when two directories hold the same stem, the first directory
wins. Requests carry names only: a path or URL never reaches the file system, because a name
is looked up in this listing, not joined onto a directory. The directories are listed again
on each lookup, so adapters added while the server runs are usable at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fluxserve.spec import check_loras


@dataclass(frozen=True)
class LoraFile:
    """One adapter on disk."""

    name: str
    path: Path
    size_bytes: int


class LoraLibrary:
    """The adapters in ``dirs`` (``.safetensors`` files, diffusers/PEFT or kohya format)."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = [Path(d) for d in dirs]

    def files(self) -> dict[str, LoraFile]:
        """Every adapter, by name, in directory order (first directory wins a name)."""
        found: dict[str, LoraFile] = {}
        for directory in self.dirs:
            try:
                entries = sorted(directory.iterdir())
            except OSError:  # a missing directory holds no adapters (logged at start)
                continue
            for path in entries:
                if path.suffix != ".safetensors" or path.stem in found:
                    continue
                try:
                    if path.is_file():
                        found[path.stem] = LoraFile(path.stem, path, path.stat().st_size)
                except OSError:
                    continue
        return found

    def names(self) -> list[str]:
        """Every adapter name, sorted."""
        return sorted(self.files())

    def path(self, name: str) -> Path:
        """The file of adapter ``name``; raises :class:`~fluxserve.spec.SpecError` (listing
        the names there are) when there is none."""
        files = self.files()
        check_loras([(name, 1.0)], files)
        return files[name].path
