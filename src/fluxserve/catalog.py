"""The model catalog: every model id users know, resolved to a checkpoint, defaults and a price."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from fluxserve.prices import LIST_PRICES_USD, MEGAPIXEL_PRICES_USD, Cost, MegapixelPrice, request_cost
from fluxserve.settings import Settings
from fluxserve.spec import GenerationSpec, OutputFormat

Family = Literal["kontext", "pro", "ultra", "flux2"]

FAMILY_INPUT_LIMITS: dict[str, int] = {"kontext": 4, "pro": 0, "ultra": 0, "flux2": 8}
"""Input images a model of each family takes unless its entry says otherwise."""

BUILTIN_CHECKPOINT = "builtin:tiny"
"""Placeholder for the checkpoint that ships with fluxserve (resolved by the engine)."""
UPSTREAM_PREFIX = "upstream:"
"""Checkpoints ``upstream:<upstream>:<model>`` name a model run by an upstream provider."""


def parse_upstream_checkpoint(checkpoint: str) -> tuple[str, str] | None:
    """``upstream:bfl:flux-2-max`` → ``("bfl", "flux-2-max")``; None for a local checkpoint."""
    if not checkpoint.startswith(UPSTREAM_PREFIX):
        return None
    name, sep, model = checkpoint[len(UPSTREAM_PREFIX) :].partition(":")
    return (name, model) if sep and name and model else None


@dataclass(frozen=True)
class Overflow:
    """Where a local model's jobs go when the local engines are too busy."""

    checkpoint: str
    """``upstream:<upstream>:<model>``."""
    wait_s: float
    """The estimated local wait beyond which a new job goes there."""

    @property
    def upstream(self) -> str:
        """The upstream's name."""
        parsed = parse_upstream_checkpoint(self.checkpoint)
        assert parsed is not None
        return parsed[0]


@dataclass(frozen=True)
class ModelEntry:
    """What fluxserve knows about one model id."""

    id: str
    family: Family
    """kontext: aspect_ratio + input images; pro: width/height; ultra: aspect_ratio at ~4 MP;
    flux2: width/height (default: the first input image's) + up to 8 reference images."""
    checkpoint: str
    steps: int
    guidance: float
    price: float
    """USD per image (for a per-megapixel model: its first megapixel)."""
    default_output_format: OutputFormat
    bfl_route: bool = True
    """Served as ``POST /v1/{id}`` on the BFL API (OpenAI names are not)."""
    base: str | None = None
    """Directory or hub repo id with the other components of a single-file checkpoint."""
    memory: str = "auto"
    """Memory mode: auto, gpu, model_offload, group_offload or sequential_offload."""
    quantize: str = "none"
    """Transformer quantization: none, fp8, int8 or nf4."""
    max_input_images: int | None = None
    """Input images the model takes; None: its family's number (:data:`FAMILY_INPUT_LIMITS`)."""
    megapixel_price: MegapixelPrice | None = None
    """Priced per megapixel (FLUX.2) rather than per image."""
    upstream_price: float | None = None
    """Forwarded models: what the upstream charges per image (USD) when it reports no cost."""
    overflow: Overflow | None = None
    """``route = "overflow"``: the upstream that takes this model's jobs when the local wait
    is too long."""

    @property
    def upstream(self) -> tuple[str, str] | None:
        """(upstream name, model name there) for a model forwarded to an upstream provider."""
        return parse_upstream_checkpoint(self.checkpoint)

    @property
    def input_limit(self) -> int:
        """How many input images one request may give (what the spec builder checks)."""
        if self.max_input_images is not None:
            return self.max_input_images
        return FAMILY_INPUT_LIMITS[self.family]

    @property
    def takes_images(self) -> bool:
        """Whether the model edits (takes input images)."""
        return self.input_limit > 0

    def cost(self, spec: GenerationSpec) -> Cost:
        """What ``spec`` costs at this model's price (per image or per megapixel)."""
        return request_cost(
            self.price,
            self.megapixel_price,
            spec.width,
            spec.height,
            spec.input_megapixels if spec.input_images else 0.0,
            spec.num_images,
        )

    @property
    def area(self) -> int:
        """Pixels of an image made from an aspect ratio (about 4 MP for ultra, else 1 MP)."""
        return 4 * 1024 * 1024 if self.family == "ultra" else 1024 * 1024


# (id, family, steps, guidance, default format, served on the BFL API); prices come from the
# one price table, fluxserve.prices, which the SDK uses too.
_BUILTIN: tuple[tuple[str, Family, int, float, OutputFormat, bool], ...] = (
    ("flux-kontext-pro", "kontext", 28, 2.5, "png", True),
    ("flux-kontext-max", "kontext", 40, 2.5, "png", True),
    ("flux-pro-1.1", "pro", 28, 3.0, "jpeg", True),
    ("flux-pro-1.1-ultra", "ultra", 28, 3.0, "jpeg", True),
    ("flux-pro", "pro", 40, 2.5, "jpeg", True),
    ("flux-dev", "pro", 28, 3.0, "jpeg", True),
    # FLUX.2: priced per megapixel (fluxserve.prices.MEGAPIXEL_PRICES_USD).
    ("flux-2-pro", "flux2", 50, 4.0, "jpeg", True),
    ("flux-2-max", "flux2", 50, 4.0, "jpeg", True),
    ("flux-2-flex", "flux2", 50, 5.0, "jpeg", True),
    ("flux-2-klein-4b", "flux2", 4, 1.0, "jpeg", True),
    ("flux-2-klein-9b", "flux2", 4, 1.0, "jpeg", True),
    # OpenAI names, so that code written for the OpenAI Images API works unchanged. They
    # edit as well as generate, so they map to a Kontext-family model.
    ("gpt-image-1", "kontext", 28, 2.5, "png", False),
    ("gpt-image-1.5", "kontext", 28, 2.5, "png", False),
    ("gpt-image-1-mini", "kontext", 20, 2.5, "png", False),
    ("gpt-image-2", "kontext", 28, 2.5, "png", False),
    ("dall-e-3", "kontext", 28, 2.5, "png", False),
    ("dall-e-2", "kontext", 20, 2.5, "png", False),
)
# Input images per model where it differs from the family's: BFL's FLUX.2 klein takes 4;
# OpenAI's GPT image models take up to 16 (the Kontext engine stitches up to 16).
_INPUT_LIMITS: dict[str, int] = {
    "flux-2-klein-4b": 4,
    "flux-2-klein-9b": 4,
    "gpt-image-1": 16,
    "gpt-image-1.5": 16,
    "gpt-image-1-mini": 16,
    "gpt-image-2": 16,
}


def _builtin_entries() -> list[ModelEntry]:
    return [
        ModelEntry(
            mid,
            family,
            BUILTIN_CHECKPOINT,
            steps,
            guidance,
            LIST_PRICES_USD[mid],
            fmt,
            bfl,
            max_input_images=_INPUT_LIMITS.get(mid),
            megapixel_price=MEGAPIXEL_PRICES_USD.get(mid),
        )
        for mid, family, steps, guidance, fmt, bfl in _BUILTIN
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
        self._unavailable: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        """The built-in ids (with the embedded model's defaults when it serves them), then the
        settings' ``default_checkpoint`` and per-model overrides."""
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
        entries = {
            k: replace(e, memory=settings.memory, quantize=settings.quantize) for k, e in entries.items()
        }
        for model_id, o in settings.models.items():
            if o.upstream is not None and o.upstream not in settings.upstreams:
                raise ValueError(
                    f"models.{model_id}.upstream names {o.upstream!r}: no [upstreams.{o.upstream}]"
                )
            route = o.route or ("upstream" if o.upstream else "local")
            if route == "upstream" and o.upstream is not None and o.checkpoint is not None:
                raise ValueError(
                    f"models.{model_id}: set upstream or checkpoint, not both (or a route: "
                    "'overflow' runs here and at the upstream when the wait here is too long)"
                )
            if route != "local" and o.upstream is None:
                raise ValueError(f"models.{model_id}: route = {route!r} needs an upstream")
            base = entries.get(model_id)
            if base is None:
                if o.family is None:
                    raise ValueError(
                        f"model {model_id!r} is not built in: set models.{model_id}.family "
                        "to 'kontext', 'pro', 'ultra' or 'flux2'"
                    )
                base = ModelEntry(
                    model_id,
                    o.family,
                    settings.default_checkpoint or BUILTIN_CHECKPOINT,
                    28,
                    3.0,
                    0.0,
                    "png" if o.family == "kontext" else "jpeg",
                    memory=settings.memory,
                    quantize=settings.quantize,
                )
            forwarded = f"{UPSTREAM_PREFIX}{o.upstream}:{o.upstream_model or model_id}"
            entries[model_id] = replace(
                base,
                family=o.family or base.family,
                checkpoint=forwarded if route == "upstream" else o.checkpoint or base.checkpoint,
                overflow=Overflow(forwarded, o.overflow_wait_s) if route == "overflow" else None,
                upstream_price=o.upstream_price if o.upstream_price is not None else base.upstream_price,
                steps=o.steps or base.steps,
                guidance=o.guidance if o.guidance is not None else base.guidance,
                price=o.price if o.price is not None else base.price,
                # A configured price is per image; a new family brings its own input limit.
                megapixel_price=None if o.price is not None else base.megapixel_price,
                max_input_images=None if o.family and o.family != base.family else base.max_input_images,
                base=o.base or base.base,
                memory=o.memory or base.memory,
                quantize=o.quantize or base.quantize,
            )
        return cls(list(entries.values()))

    def apply_checkpoint_defaults(
        self, checkpoint: str, steps: int, guidance: float, settings: Settings
    ) -> None:
        """Give the models on ``checkpoint`` the checkpoint's own defaults (its family's, or what
        it declares), except a model's ``steps``/``guidance`` that the settings name."""
        for entry in list(self._entries.values()):
            if entry.checkpoint != checkpoint:
                continue
            o = settings.models.get(entry.id)
            self._entries[entry.id] = replace(
                entry,
                steps=o.steps if o is not None and o.steps else steps,
                guidance=o.guidance if o is not None and o.guidance is not None else guidance,
            )

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry for ``model_id``, or None."""
        return self._entries.get(model_id)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def ids(self) -> list[str]:
        """Every model id."""
        return list(self._entries)

    def checkpoints(self) -> set[str]:
        """Every checkpoint some model uses."""
        return {e.checkpoint for e in self._entries.values()}

    def mark_unavailable(self, checkpoint: str, reason: str) -> list[str]:
        """Record that ``checkpoint`` could not load; returns the model ids it takes down."""
        ids = [e.id for e in self._entries.values() if e.checkpoint == checkpoint]
        for model_id in ids:
            self._unavailable[model_id] = f"model {model_id!r} is unavailable: {reason}"
        return ids

    def unavailable(self, model_id: str) -> str | None:
        """Why ``model_id`` cannot serve (its checkpoint failed to load), or None. A model with
        ``route = "overflow"`` still serves (at its upstream) when its local checkpoint failed."""
        entry = self._entries.get(model_id)
        if entry is not None and entry.overflow is not None:
            return None
        return self._unavailable.get(model_id)

    def unavailable_models(self) -> dict[str, str]:
        """Every model id that cannot serve, with the reason."""
        return dict(self._unavailable)
