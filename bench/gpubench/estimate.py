"""How long each case of a plan should take: a small cost model per device class.

A case's estimate is its load, its compile (compiled modes), and its images: ``(warm-up + runs)
x (steps x seconds per step + seconds per image outside the steps)``. The numbers start as the
assumptions below and are replaced by what the run measures as it goes (:meth:`Costs.learn`):
plain diffusers' row gives the load and its step time, ``fast``'s row gives the compile and
``fast``'s step time, so the later, smaller cases are estimated from this machine's figures.

Where the H100 assumptions come from (none is a measurement: no GPU figure exists yet):

- a FLUX.1 transformer step at 1024x1024 is about 1.25e14 FLOP (2 x 11.9e9 weights x 4608
  tokens, 4096 image + 512 text, plus attention, 57 blocks x 4 x 4608^2 x 3072); at about
  500 TFLOP/s, half of the H100's dense bf16 rate, that is 0.25 s, so 28 steps are about 7 s an
  image, as the earlier runbook assumed. ``fast`` (fp8 matmuls, fused QKV, compiled blocks) is
  assumed at half that: 0.12 s (the issue's target is 0.086 s, 2.4 s over 28 steps);
- outside the steps: T5-XXL over 512 tokens (about 5e12 FLOP) and CLIP, the VAE decode at
  1024x1024, the image's conversion on the host: about 0.3 s (0.2 s compiled, channels-last);
- a pipeline load reads dev's 34 GB from the page cache at about 2 GB/s: 20 s; the build
  (random init on the GPU, then the save to local disk) 70 s; fluxserve's compile warm-up
  at load (two graphs per block type: the size, then the batch of two) 60 s the first time,
  30 s for a later compile that reads inductor's cache (the plan shares one cache directory).

The tiny CPU numbers are what this project's 2-core CPU machine took for ``--plan first
--tiny`` (2026-12-06, the machine shared with other work), rounded up: build 3.2 s, a load
0.1 s, dev ``fast``'s compile at load 80 s, schnell's over the same cache 5 s, a tiny step
milliseconds. A compile reads the cache only at the size that wrote it: the tiny server runs at
256x256 (the API's smallest side) after cases at 64x64, so it compiles anew (see
:meth:`gpubench.plan.PlanRun.estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Costs:
    """Seconds per piece of work on one device class."""

    label: str
    build_s: float
    """The dev checkpoint: random init on the device and one save to local disk."""
    load_s: float
    """One pipeline load of the checkpoint (from the page cache)."""
    compile_s: float
    """Extra load time of a compiled mode: fp8 conversion and the compile warm-up, first time."""
    recompile_s: float
    """The same for a later compile of the same blocks (inductor's cache on local disk)."""
    step_s: dict[str, float]
    """One denoising step at the plan's size, by mode (``diffusers``, ``fast``)."""
    image_s: dict[str, float]
    """Per image besides the steps (text encoders, VAE decode, to PIL), by mode."""
    server_start_s: float
    """``fluxserve serve`` before its load: imports, database, app."""
    request_s: float
    """Per server request on top of the engine: HTTP, JPEG, moderation, base64."""
    learned: list[str] = field(default_factory=list)
    """What the run measured and put in place of an assumption."""

    def build(self) -> float:
        """Seconds to build the dev checkpoint."""
        return self.build_s

    def case(self, mode: str, steps: int, images: int, compiled_before: bool) -> float:
        """Seconds of one timed case: load (+ compile), then ``images`` calls (warm-up + runs)."""
        compiled = mode != "diffusers"
        load = self.load_s + (
            0.0 if not compiled else self.recompile_s if compiled_before else self.compile_s
        )
        return load + images * self.image(mode, steps)

    def image(self, mode: str, steps: int) -> float:
        """Seconds per image in ``mode`` at ``steps`` steps."""
        return steps * self.step_s[mode] + self.image_s[mode]

    def server(self, steps: int, requests: int, compiled_before: bool) -> float:
        """Seconds of the server run: start, load with its compile, 2 warm-up requests, the rest
        (one engine: the images are made one after another, the HTTP work overlaps them)."""
        compile_s = self.recompile_s if compiled_before else self.compile_s
        per_request = self.image("fast", steps) + self.request_s
        return self.server_start_s + self.load_s + compile_s + (2 + requests) * per_request

    def learn(self, row: dict[str, Any]) -> None:
        """Put what a measured case row says in place of the assumptions it covers."""
        if "seconds_median" not in row:
            return
        mode, steps = row["mode"], row["steps"]
        step = max(0.0, (row["seconds_median"] - self.image_s[mode]) / steps)
        if mode == "diffusers":
            ratio = self.step_s["fast"] / self.step_s["diffusers"]  # fast's assumed share, kept
            self.load_s = row["load_s"]
            self.step_s = dict(self.step_s, diffusers=step, fast=step * ratio)
            self.learned.append(
                f"load {row['load_s']:.1f} s and diffusers {step:.4f} s/step from {row['model']}"
            )
        elif mode == "fast" and not row.get("compiled_before"):
            share = self.recompile_s / self.compile_s
            self.compile_s = max(0.0, row["load_s"] - self.load_s)
            self.recompile_s = self.compile_s * share
            self.step_s = dict(self.step_s, fast=step)
            self.learned.append(
                f"compile {self.compile_s:.1f} s and fast {step:.4f} s/step from {row['model']}"
            )


H100 = Costs(
    label="h100 (assumed, see gpubench.estimate)",
    build_s=70,
    load_s=20,
    compile_s=60,
    recompile_s=30,
    step_s={"diffusers": 0.25, "fast": 0.12},
    image_s={"diffusers": 0.3, "fast": 0.2},
    server_start_s=15,
    request_s=0.05,
)
TINY_CPU = Costs(
    label="tiny on the CPU (this project's 2-core machine, measured)",
    build_s=5,
    load_s=1,
    compile_s=80,
    recompile_s=10,
    step_s={"diffusers": 0.01, "fast": 0.01},
    image_s={"diffusers": 0.03, "fast": 0.03},
    server_start_s=8,
    request_s=0.05,
)


def costs_for(device_label: str, tiny: bool) -> Costs:
    """A fresh copy of the cost model of the device class (any GPU: the H100's assumptions)."""
    if tiny:
        return replace(TINY_CPU, learned=[])
    label = H100.label if device_label == "h100" else f"{H100.label}, used for {device_label}"
    return replace(H100, label=label, learned=[])
