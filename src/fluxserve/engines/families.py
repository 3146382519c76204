"""FLUX families: which diffusers pipeline a checkpoint needs, and how that pipeline is driven.

A family is recognised from a diffusers directory's ``model_index.json`` (``_class_name``) or
from the tensor names of a single-file transformer (original FLUX layout or diffusers layout).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FamilyName = Literal["flux1", "flux1-kontext", "flux2", "flux2-klein"]


@dataclass(frozen=True)
class FluxFamily:
    """How one FLUX family is loaded and called."""

    name: FamilyName
    pipeline: str
    """The diffusers pipeline class."""
    transformer: str
    """The diffusers transformer class (for single-file loading)."""
    steps: int
    guidance: float
    guidance_distilled: bool
    """Guidance is an input of the model (FLUX.1 dev, FLUX.2 dev) rather than two passes."""
    max_sequence_length: int
    max_reference_images: int
    """Input images the model takes (0: text to image only; Kontext stitches them into one)."""
    native_references: bool
    """The pipeline takes a list of reference images (FLUX.2); else they are stitched (Kontext)."""


FLUX1 = FluxFamily("flux1", "FluxPipeline", "FluxTransformer2DModel", 28, 3.5, True, 512, 0, False)
FLUX1_KONTEXT = FluxFamily(
    "flux1-kontext", "FluxKontextPipeline", "FluxTransformer2DModel", 28, 2.5, True, 512, 16, False
)
FLUX2 = FluxFamily("flux2", "Flux2Pipeline", "Flux2Transformer2DModel", 50, 4.0, True, 512, 8, True)
FLUX2_KLEIN = FluxFamily(
    "flux2-klein", "Flux2KleinPipeline", "Flux2Transformer2DModel", 4, 1.0, False, 512, 8, True
)

FAMILIES: dict[str, FluxFamily] = {f.pipeline: f for f in (FLUX1, FLUX1_KONTEXT, FLUX2, FLUX2_KLEIN)}


class UnknownFamilyError(ValueError):
    """The checkpoint is not one of the FLUX families fluxserve runs."""


def family_from_index(class_name: str | None) -> FluxFamily:
    """The family of a diffusers directory, from its ``model_index.json`` ``_class_name``."""
    family = FAMILIES.get(class_name or "")
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise UnknownFamilyError(
            f"pipeline class {class_name!r} is not a FLUX family fluxserve runs ({known})"
        )
    return family


def transformer_family(keys: Iterable[str]) -> Literal["flux1", "flux2"]:
    """Which transformer generation a single-file checkpoint holds, from its tensor names
    (original BFL/ComfyUI layout, with or without the ``model.diffusion_model.`` prefix, or
    diffusers layout)."""
    names = {k.removeprefix("model.diffusion_model.") for k in keys}
    if any(k.startswith(("single_stream_modulation.", "double_stream_modulation_img.")) for k in names):
        return "flux2"
    if any(k.startswith(("double_blocks.", "single_blocks.", "transformer_blocks.")) for k in names):
        return "flux1"
    raise UnknownFamilyError("its tensors are not a FLUX.1 or FLUX.2 transformer")


def check_single_file_family(file_family: str, base: FluxFamily) -> None:
    """Refuse a single-file transformer whose generation differs from its base's pipeline."""
    base_gen = "flux2" if base.name.startswith("flux2") else "flux1"
    if file_family != base_gen:
        raise UnknownFamilyError(
            f"wrong family: the file holds a {file_family.upper()} transformer but its base is a "
            f"{base.pipeline} ({base_gen.upper()}); point 'base' at a matching pipeline"
        )


def checkpoint_defaults(
    pipeline_dir: Path, transformer_keys: Iterable[str] | None = None
) -> tuple[int, float]:
    """(steps, guidance) a checkpoint runs with when a request names none: its family's, told
    apart within a family by its config (FLUX.1 without a guidance embedding is schnell-like,
    4 steps; klein that is not step-distilled is a base model, 50 steps with CFG), unless the
    checkpoint declares its own in ``fluxserve.json``. ``transformer_keys``: the tensor names of
    a single-file transformer that replaces the directory's."""
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    family = family_from_index(index.get("_class_name"))
    steps, guidance = family.steps, family.guidance
    if family is FLUX1:
        if transformer_keys is not None:
            guided = any("guidance_in." in k or "guidance_embedder." in k for k in transformer_keys)
        else:
            config_path = pipeline_dir / "transformer" / "config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            guided = bool(config.get("guidance_embeds", True))
        if not guided:  # FLUX.1 schnell and its fine-tunes: timestep-distilled
            steps, guidance = 4, 0.0
    elif family is FLUX2_KLEIN and not index.get("is_distilled", False):
        steps, guidance = 50, 4.0
    extra_path = pipeline_dir / "fluxserve.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    return int(extra.get("default_steps", steps)), float(extra.get("default_guidance", guidance))
