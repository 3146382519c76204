"""The model catalog: every model id users know, resolved to a checkpoint, defaults and a price."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from fluxserve.settings import Settings

Family = Literal["kontext", "pro", "ultra"]

BUILTIN_CHECKPOINT = "builtin:tiny"
"""Placeholder for the checkpoint that ships with fluxserve (resolved by the engine)."""


@dataclass(frozen=True)
class ModelEntry:
    """What fluxserve knows about one model id."""

    id: str
    family: Family
    """kontext: aspect_ratio + input images; pro: width/height; ultra: aspect_ratio at ~4 MP."""
    checkpoint: str
    steps: int
    guidance: float
    price: float
    """USD per image."""
    default_output_format: Literal["jpeg", "png", "webp"]
    bfl_route: bool = True
    """Served as ``POST /v1/{id}`` on the BFL API (OpenAI names are not)."""

    @property
    def takes_images(self) -> bool:
        return self.family == "kontext"

    @property
    def area(self) -> int:
        return 4 * 1024 * 1024 if self.family == "ultra" else 1024 * 1024


def _builtin_entries() -> list[ModelEntry]:
    b = BUILTIN_CHECKPOINT
    return [
        ModelEntry("flux-kontext-pro", "kontext", b, 28, 2.5, 0.04, "png"),
        ModelEntry("flux-kontext-max", "kontext", b, 40, 2.5, 0.08, "png"),
        ModelEntry("flux-pro-1.1", "pro", b, 28, 3.0, 0.04, "jpeg"),
        ModelEntry("flux-pro-1.1-ultra", "ultra", b, 28, 3.0, 0.06, "jpeg"),
        ModelEntry("flux-pro", "pro", b, 40, 2.5, 0.05, "jpeg"),
        ModelEntry("flux-dev", "pro", b, 28, 3.0, 0.025, "jpeg"),
        # OpenAI names, so that code written for the OpenAI Images API works unchanged. They
        # edit as well as generate, so they map to a Kontext-family model.
        ModelEntry("gpt-image-1", "kontext", b, 28, 2.5, 0.04, "png", bfl_route=False),
        ModelEntry("gpt-image-1.5", "kontext", b, 28, 2.5, 0.04, "png", bfl_route=False),
        ModelEntry("gpt-image-1-mini", "kontext", b, 20, 2.5, 0.02, "png", bfl_route=False),
        ModelEntry("dall-e-3", "kontext", b, 28, 2.5, 0.04, "png", bfl_route=False),
        ModelEntry("dall-e-2", "kontext", b, 20, 2.5, 0.02, "png", bfl_route=False),
    ]


def builtin_defaults() -> tuple[int, float] | None:
    """(steps, guidance) declared by the shipped embedded checkpoint, if this build has one."""
    import json

    from fluxserve.embedded import embedded_checkpoint

    path = embedded_checkpoint()
    if path is None:
        return None
    meta = json.loads((path / "fluxserve.json").read_text())
    return int(meta.get("default_steps", 16)), float(meta.get("default_guidance", 3.0))


class ModelCatalog:
    """Model ids → :class:`ModelEntry`, built-ins first, then the settings' overrides."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._entries = {e.id: e for e in entries}

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        entries = {e.id: e for e in _builtin_entries()}
        # The embedded model declares its own good defaults (it needs far fewer steps than a
        # real FLUX checkpoint); "max" models get half as many again, for quality.
        builtin = builtin_defaults()
        if builtin is not None and not settings.default_checkpoint:
            steps, guidance = builtin
            entries = {
                k: replace(e, steps=round(steps * 1.5) if k.endswith("-max") else steps, guidance=guidance)
                for k, e in entries.items()
            }
        if settings.default_checkpoint:
            entries = {k: replace(e, checkpoint=settings.default_checkpoint) for k, e in entries.items()}
        for model_id, o in settings.models.items():
            base = entries.get(model_id)
            if base is None:
                if o.family is None:
                    raise ValueError(
                        f"model {model_id!r} is not built in: set models.{model_id}.family "
                        "to 'kontext', 'pro' or 'ultra'"
                    )
                base = ModelEntry(
                    model_id,
                    o.family,
                    settings.default_checkpoint or BUILTIN_CHECKPOINT,
                    28,
                    3.0,
                    0.0,
                    "png" if o.family == "kontext" else "jpeg",
                )
            entries[model_id] = replace(
                base,
                family=o.family or base.family,
                checkpoint=o.checkpoint or base.checkpoint,
                steps=o.steps or base.steps,
                guidance=o.guidance if o.guidance is not None else base.guidance,
                price=o.price if o.price is not None else base.price,
            )
        return cls(list(entries.values()))

    def get(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._entries.values())

    def ids(self) -> list[str]:
        return list(self._entries)

    def checkpoints(self) -> set[str]:
        return {e.checkpoint for e in self._entries.values()}
