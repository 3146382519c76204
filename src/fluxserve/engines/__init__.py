"""Engines turn a request into images, report steps and honour cancellation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from fluxserve.spec import LoraRef


class JobCancelled(Exception):
    """Raised inside a run when its job was cancelled; the run stops at the next step."""


class NotAccepted(Exception):
    """Raised by an engine that never took the request on (an upstream that refused it or
    could not be reached before accepting it): nothing ran, so it may run elsewhere."""


class EngineModerated(Exception):
    """Raised by an engine whose provider refused the request or its output (an upstream's
    moderation): the job ends as Request Moderated or Content Moderated, not as Error."""

    def __init__(self, stage: Literal["request", "content"], category: str, source: str) -> None:
        super().__init__(f"{stage} moderated by {source} ({category})")
        self.stage = stage
        self.category = category
        self.source = source


@dataclass
class EngineRequest:
    """What an engine runs: checkpoint, prompt, size, seed, steps, guidance, input images, LoRAs."""

    checkpoint: str
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    num_images: int = 1
    images: list[Image.Image] = field(default_factory=list)
    loras: tuple[LoraRef, ...] = ()
    mask: Image.Image | None = None
    """Inpainting: repaint the first input image where this is white (keep it where black)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Filled by the engine: facts the job's result records (an upstream's id and cost)."""


StepCallback = Callable[[int, int], None]
"""Called as ``on_step(done_steps, total_steps)`` after each denoising step."""
PreviewCallback = Callable[[int, list[Image.Image]], None]
"""Called as ``on_preview(done_steps, images)`` with the current estimate, decoded."""


class Engine(Protocol):
    """Turns requests into images; loads each checkpoint once."""

    def load(self, checkpoint: str) -> None:
        """Load (and keep) the pipeline for ``checkpoint``; idempotent."""

    def generate(
        self,
        request: EngineRequest,
        on_step: StepCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
        want_preview: Callable[[int], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Run one request; blocking. Raises :class:`JobCancelled` when ``cancelled()``
        turns true (checked before each step). After a step for which ``want_preview(step)``
        is true, the current latents are decoded and passed to ``on_preview``."""


def generate_batch(
    engine: Engine,
    requests: list[EngineRequest],
    on_step: StepCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[list[Image.Image]]:
    """Each request's images: in one call where ``engine`` batches (its ``generate_batch``),
    else one request after another."""
    batch = getattr(engine, "generate_batch", None)
    if batch is not None:
        return batch(requests, on_step=on_step, cancelled=cancelled)  # type: ignore[no-any-return]
    return [engine.generate(r, on_step=on_step, cancelled=cancelled) for r in requests]


def prefetch(engine: Engine, request: EngineRequest) -> bool:
    """Let ``engine`` prepare a request that runs soon (its ``prefetch``: the prompt's text
    encoding), from another thread while it runs; False where it has nothing to prepare."""
    prepare = getattr(engine, "prefetch", None)
    return bool(prepare(request)) if prepare is not None else False
