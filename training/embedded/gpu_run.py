"""Where a GPU training run stands: its stages, budget, progress and weights (``gpu_train``).

A :class:`Run` is what the state parts (:mod:`training.embedded.state`) hold between commands;
:func:`newest_state` picks the directory to resume from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.embedded.config import Config
from training.embedded.state import read_summary

STAGES = ("vae", "text", "transformer", "done")
# Settings that shape the weights: a resumed run keeps the saved ones (the rest may change).
SHAPE_FIELDS = (
    "native_area", "multiple", "latent_channels", "vae_blocks", "vae_layers", "width", "heads",
    "double_blocks", "single_blocks", "text_dim", "text_layers", "max_text",
)  # fmt: skip


@dataclass
class Budget:
    """Minutes per stage (over all commands), this command's limit, and the save interval."""

    vae: float = 4.0
    text: float = 0.75
    transformer: float = 15.5
    stop_after: float = 8.3
    save_every: float = 2.0


@dataclass
class Run:
    """Where training stands: the stage, the time and steps spent per stage, the weights."""

    cfg: Config
    stage: str = "vae"
    elapsed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0.0))
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0))
    samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0))
    shift: float = 0.0
    scale: float = 1.0
    roundtrip: dict[str, float] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # state_dicts by part name

    def to_state(self) -> dict[str, Any]:
        """Everything, as plain containers (for :func:`~training.embedded.state.save_state`)."""
        plain = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "cfg"}
        return plain | {"cfg": asdict(self.cfg)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Run:
        """The inverse of :meth:`to_state`."""
        return cls(**{k: v for k, v in state.items() if k != "cfg"}, cfg=Config(**state["cfg"]))

    def summary(self) -> dict[str, Any]:
        """What ``state.json`` says besides the parts."""
        return {
            "stage": self.stage,
            "elapsed_min": {k: round(v / 60, 3) for k, v in self.elapsed.items()},
            "steps": self.steps,
            "samples": self.samples,
            "vae_roundtrip": self.roundtrip,
            "config": asdict(self.cfg),
        }


def cpu_copy(obj: Any) -> Any:
    """``obj`` with every tensor in it copied to the CPU (state dicts, nested containers)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def newest_state(dirs: list[Path]) -> Path | None:
    """Of the directories holding a state, the one furthest on (stage, then time spent)."""
    best, key = None, (-1, -1.0)
    for d in dirs:
        summary = read_summary(d)
        if summary is None:
            continue
        k = (
            STAGES.index(summary["stage"]),
            sum(summary["elapsed_min"].values()) + sum(summary["steps"].values()) * 1e-9,
        )
        if k > key:
            best, key = d, k
    return best
