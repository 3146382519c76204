"""Where a checkpoint's files are: a local directory, a hub repo id, or one transformer file.

A checkpoint setting is one of

- a local diffusers pipeline directory (with ``model_index.json``);
- a hub repo id (``black-forest-labs/FLUX.1-Kontext-dev``), resolved through the standard hub
  cache: ``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured by huggingface_hub, and
  a first download shows progress and resumes where it stopped;
- a single transformer file (``.safetensors`` in the original FLUX layout, or ``.gguf``), local
  or ``org/name/path/file.gguf`` on the hub, combined with ``base``: a directory or repo id
  holding the other components.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fluxserve.engines.memory import MemoryMode
from fluxserve.engines.speed import QuantizeSetting, SpeedOptions

SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf", ".sft")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Only the diffusers layout: a hub repo's root often also holds the same weights as one big
# original-layout file (flux1-dev.safetensors, ae.safetensors), which would double the download.
_PIPELINE_PATTERNS = ["*.json", "*.txt", "*.model", "*/*"]


class CheckpointError(Exception):
    """A checkpoint cannot be loaded; the message names the path and the cause."""


@dataclass(frozen=True)
class CheckpointSource:
    """One checkpoint as configured: where it is and how it should run."""

    checkpoint: str
    base: str | None = None
    """Directory or repo id with the other components, for a single-file transformer."""
    memory: MemoryMode = "auto"
    quantize: QuantizeSetting = "none"
    """``auto`` resolves per device (see :func:`~fluxserve.engines.speed.auto_quantize`)."""
    speed: SpeedOptions = SpeedOptions()


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Local files of a checkpoint: a pipeline directory and, maybe, a transformer file."""

    pipeline_dir: Path
    transformer_file: Path | None = None


def is_single_file(name: str) -> bool:
    """Whether ``name`` names one transformer file rather than a pipeline."""
    return name.lower().endswith(SINGLE_FILE_SUFFIXES)


def is_repo_id(name: str) -> bool:
    """Whether ``name`` looks like a hub repo id (``org/name``) and is no local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def pull(repo_id: str, *, quiet: bool = False, transformer_weights: bool = True) -> Path:
    """Download (or find in the hub cache) a pipeline repo's diffusers files; resumable.
    ``transformer_weights=False`` skips the transformer's weights (a base for a single file)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if quiet:
        disable_progress_bars()
    else:
        enable_progress_bars()
    ignore = None if transformer_weights else ["transformer/*.safetensors", "transformer/*.bin"]
    return Path(snapshot_download(repo_id, allow_patterns=_PIPELINE_PATTERNS, ignore_patterns=ignore))


def pipeline_dir(name: str, *, transformer_weights: bool = True) -> Path:
    """A local pipeline directory for a directory path or a hub repo id."""
    if is_repo_id(name):
        try:
            path = pull(name, quiet=True, transformer_weights=transformer_weights)
        except Exception as exc:
            raise CheckpointError(
                f"hub repo {name!r} could not be fetched ({exc.__class__.__name__}: {exc}); "
                "run 'fluxserve models pull' with network access, set HF_TOKEN for a gated "
                "repo, or point the checkpoint at a local directory"
            ) from exc
    else:
        path = Path(name).expanduser()
    if not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{name!r} is not a diffusers pipeline directory (no model_index.json at {path}); point "
            "the model's 'checkpoint' at a local FLUX directory, a hub repo id, or a single "
            "transformer file with 'base'"
        )
    check_components(path)
    return path


def check_components(path: Path, skip: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` naming a component ``model_index.json`` lists but lacks."""
    index = json.loads((path / "model_index.json").read_text())
    for name, value in index.items():
        if name.startswith("_") or name in skip or not isinstance(value, list) or value[0] is None:
            continue
        if not (path / name).is_dir():
            raise CheckpointError(f"missing component {name!r}: no folder {path / name}")


def transformer_file(name: str) -> Path:
    """A local single transformer file (downloaded through the hub cache when given as
    ``org/name/path/file``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    parts = name.split("/")
    if not name.startswith(("/", ".", "~")) and len(parts) >= 3:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
        except Exception as exc:
            raise CheckpointError(
                f"transformer file {name!r} could not be fetched from the hub: {exc}"
            ) from exc
    raise CheckpointError(f"transformer file {name!r} does not exist")


def resolve(source: CheckpointSource) -> ResolvedCheckpoint:
    """The local files of ``source`` (downloading from the hub cache where needed)."""
    if not is_single_file(source.checkpoint):
        return ResolvedCheckpoint(pipeline_dir(source.checkpoint))
    if not source.base:
        raise CheckpointError(
            f"{source.checkpoint!r} is a single transformer file: set the model's 'base' to a "
            "directory or hub repo id with the other components (VAE, text encoders, scheduler)"
        )
    file = transformer_file(source.checkpoint)
    base = pipeline_dir(source.base, transformer_weights=False)
    return ResolvedCheckpoint(base, file)


def pull_checkpoint(checkpoint: str, base: str | None) -> list[Path]:
    """Fetch what a checkpoint setting names from the hub, showing progress (``models pull``).

    Local paths are only checked; the local files are returned."""
    from huggingface_hub.utils import enable_progress_bars

    enable_progress_bars()
    if not is_single_file(checkpoint):
        return [pull(checkpoint) if is_repo_id(checkpoint) else pipeline_dir(checkpoint)]
    paths = [transformer_file(checkpoint)]
    if base:
        paths.append(pull(base, transformer_weights=False) if is_repo_id(base) else pipeline_dir(base))
    return paths
