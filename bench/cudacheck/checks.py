"""The engine checks: each builds fluxserve's engine as the server does (``Settings`` ->
``ModelCatalog`` -> ``jobs.fleet.diffusers_engine``), runs requests through it and returns its
row. Speed settings stay at fluxserve's defaults except ``compile``, which is off here (the
compiled path is the server check's; a compile warm-up per engine would cost minutes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gpubench.builders import free_memory

from cudacheck.models import GIB, Checkpoints, component_bytes
from cudacheck.report import (
    Report,
    image_difference,
    image_facts,
    noise_image,
    peak_gib,
    reset_peak,
    right_half_mask,
    same_pixels,
    sync,
)

GUIDANCE = {"flux1-dev": 3.5, "flux1-kontext-dev": 2.5, "flux2-klein-4b": 1.0}
PROMPT = "a photo of a red cat on the blue dog"
ASSUMED_CARD_CONTEXT_GIB = 0.5
"""What a real card's driver and CUDA context take before the allocator's first byte (on the
CPU, where it cannot be measured, the plan for a card assumes this)."""


@dataclass
class Run:
    """What every check needs: where to record, on what, at which size, from which checkpoints."""

    report: Report
    device: torch.device
    tiny: bool
    size: int
    steps: int
    """The model's full step count (seconds per image are timed at it)."""
    quick_steps: int
    """Steps of the equality and edit checks (what they check does not depend on it)."""
    checkpoints: Checkpoints
    data_root: Path


def make_engine(run: Run, ckpt: Path, name: str, **values: Any) -> Any:
    """fluxserve's engine for ``ckpt`` as ``fluxserve serve`` builds it, with ``values`` over the
    default settings (``compile`` off unless given)."""
    from fluxserve.catalog import ModelCatalog
    from fluxserve.jobs.fleet import diffusers_engine
    from fluxserve.loras import LoraLibrary
    from fluxserve.settings import Settings

    values.setdefault("compile", False)
    settings = Settings(
        default_checkpoint=str(ckpt), data_dir=run.data_root / name, device=run.device.type, **values
    )
    catalog = ModelCatalog.from_settings(settings)
    return diffusers_engine(settings, catalog, settings.device, LoraLibrary(settings.lora_dirs))


def request(ckpt: Path, model: str, run: Run, steps: int, seed: int = 7, **extra: Any) -> Any:
    """One engine request for ``model``'s checkpoint at the run's size."""
    from fluxserve.engines import EngineRequest

    return EngineRequest(
        checkpoint=str(ckpt),
        prompt=PROMPT,
        width=run.size,
        height=run.size,
        seed=seed,
        steps=steps,
        guidance=GUIDANCE[model],
        **extra,
    )


def timed(engine: Any, req: Any, device: torch.device) -> tuple[Any, float]:
    """The request's first image and its seconds."""
    sync(device)
    start = time.perf_counter()
    image = engine.generate(req)[0]
    sync(device)
    return image, time.perf_counter() - start


def loaded(engine: Any, ckpt: Path, device: torch.device) -> float:
    """Load ``ckpt`` into ``engine``; its seconds."""
    start = time.perf_counter()
    engine.load(str(ckpt))
    sync(device)
    return time.perf_counter() - start


def quantize_choice(device: torch.device) -> Any:
    """What ``quantize = "auto"`` picks for FLUX.1-dev without LoRAs: on a GPU the engine's own
    :func:`choose_quantize`; on the CPU, for a 24 GB card of compute capability 8.9 (RTX 4090
    class) with torchao, the same pure :func:`auto_quantize` with those facts."""
    from fluxserve.engines.speed import auto_quantize, choose_quantize

    if device.type == "cuda":
        return choose_quantize("auto", device, False, False)
    return auto_quantize("auto", "cuda", (8, 9), True)


@contextlib.contextmanager
def card_of(device: torch.device, cap_gib: float) -> Iterator[dict[str, Any]]:
    """Make this process see a card of ``cap_gib`` GiB: the allocator is capped with
    ``torch.cuda.set_per_process_memory_fraction`` (an allocation past the card's memory raises
    OOM). The engine's :func:`~fluxserve.engines.memory.free_device_bytes` reads that cap (the
    driver's ``mem_get_info`` does not see it); the row records what it reported. What the
    driver holds outside the allocator (the context) counts against the cap, as on a real card."""
    from fluxserve.engines.memory import free_device_bytes

    total = torch.cuda.get_device_properties(device).total_memory
    free, _ = torch.cuda.mem_get_info(device)
    outside = (total - free) - torch.cuda.memory_reserved(device)
    cap = int(cap_gib * GIB)
    torch.cuda.set_per_process_memory_fraction(max(0.0, (cap - outside) / total), device)
    try:
        engine_free = free_device_bytes(device) or 0
        yield {
            "cap_gib": cap_gib,
            "outside_allocator_gib": round(outside / GIB, 2),
            "engine_free_gib": round(engine_free / GIB, 2),
            "engine_reads_cap": engine_free <= cap - outside,
        }
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        free_memory()


def memory_plan(run: Run, cap_gib: float, context: int) -> dict[str, Any]:
    """The mode ``memory = "auto"`` picks for full-size FLUX.1-dev on a card of ``cap_gib``, from
    the engine's own :func:`plan_memory` and the components' sizes (counted from the published
    architecture), with the transformer as ``quantize = "auto"`` would quantize it; and
    ``without_fp8``: the mode on a card of that size without fp8 (bf16 weights)."""
    from fluxserve.engines.memory import plan_memory, quantized_bytes
    from fluxserve.engines.speed import quantize_bytes_kind

    quantize = quantize_choice(run.device)
    free = int(cap_gib * GIB) - context

    def plan(kind: Any) -> tuple[dict[str, int], Any]:
        needed = {
            name: quantized_bytes(n, 2, kind) if name == "transformer" else n
            for name, n in component_bytes("flux1-dev").items()
        }
        return needed, plan_memory("auto", free, needed, "cuda")

    needed, choice = plan(quantize_bytes_kind(quantize))
    return {
        "quantize": quantize.value,
        "quantize_reason": quantize.reason,
        "components_gib": {k: round(v / GIB, 2) for k, v in needed.items()},
        "free_gib": round(free / GIB, 2),
        "mode": choice.mode,
        "reason": choice.reason,
        "without_fp8": plan("none")[1].mode,
    }


def check_memory_cap(run: Run, row: dict[str, Any], cap_gib: float) -> None:
    """FLUX.1-dev at the run's size and full steps on a card of ``cap_gib`` GiB, in the mode
    ``memory = "auto"`` picks there: it must finish without OOM. On the CPU the plan for such a
    card is recorded and that mode's settings run at tiny size in host memory."""
    row.update(model="flux1-dev", size=run.size, steps=run.steps)
    ckpt = run.checkpoints.path("flux1-dev")
    if run.device.type == "cuda":
        with card_of(run.device, cap_gib) as card:
            row["card"] = card
            row["plan"] = memory_plan(run, cap_gib, int(card["outside_allocator_gib"] * GIB))
            reset_peak(run.device)
            engine = make_engine(run, ckpt, row["check"], memory="auto", quantize="auto")
            row["load_s"] = round(loaded(engine, ckpt, run.device), 2)
            chosen = engine.loaded(str(ckpt)).memory
            row.update(mode=chosen.mode, mode_reason=chosen.reason)
            timed(engine, request(ckpt, "flux1-dev", run, 1, seed=1), run.device)  # warm-up: 1 step
            image, seconds = timed(engine, request(ckpt, "flux1-dev", run, run.steps), run.device)
            row.update(image_facts(image))
            row.update(seconds_per_image=round(seconds, 2), **peak_gib(run.device))
            del engine
    else:
        row["plan"] = memory_plan(run, cap_gib, int(ASSUMED_CARD_CONTEXT_GIB * GIB))
        mode = row["plan"]["mode"]
        engine = make_engine(run, ckpt, row["check"], memory=mode, quantize="auto")
        row["load_s"] = round(loaded(engine, ckpt, run.device), 2)
        row["mode"] = engine.loaded(str(ckpt)).memory.mode
        timed(engine, request(ckpt, "flux1-dev", run, 1, seed=1), run.device)  # warm-up: 1 step
        image, seconds = timed(engine, request(ckpt, "flux1-dev", run, run.steps), run.device)
        row.update(image_facts(image))
        row.update(seconds_per_image=round(seconds, 2), **peak_gib(run.device))
        row["cpu_limits"] = (
            f"no memory cap on the CPU: the plan is the engine's plan_memory for a {cap_gib:g} GiB "
            f"card (full-size component sizes); memory = '{mode}' was set and the CPU runs every "
            "mode in host memory, so the offload hooks themselves did not run"
        )
        del engine
    row["mode_matches_plan"] = row["mode"] == row["plan"]["mode"] if run.device.type == "cuda" else None
    row["ok"] = row["pixel_std"] > 0  # finished, and not a blank (NaN) image


def check_fp8(run: Run, row: dict[str, Any]) -> None:
    """``quantize = "auto"`` (fp8 where the GPU has it) against ``quantize = "none"`` (bf16) on
    the same weights, prompt and seed: PSNR and mean absolute difference of the two images and
    both speeds (uncompiled: the compiled fp8 speed is bench/gpu.py's ``fast`` mode). Each
    engine also runs a short request twice: ``repeat_identical`` says whether it gave the same
    pixels (the same seed, the same bytes, with compile off)."""
    row.update(model="flux1-dev", size=run.size, steps=run.steps)
    ckpt = run.checkpoints.path("flux1-dev")
    images = {}
    for label, quantize in (("bf16", "none"), ("fp8", "auto")):
        free_memory()
        reset_peak(run.device)
        engine = make_engine(run, ckpt, f"fp8-{label}", quantize=quantize)
        part: dict[str, Any] = {"load_s": round(loaded(engine, ckpt, run.device), 2)}
        row[label] = part  # filled as it goes: a failure later keeps what was measured
        quick = request(ckpt, "flux1-dev", run, run.quick_steps)
        first, _ = timed(engine, quick, run.device)  # also the warm-up (CUDA handles, autotuning)
        again, _ = timed(engine, quick, run.device)
        part["repeat_identical"] = same_pixels(first, again)
        images[label], seconds = timed(engine, request(ckpt, "flux1-dev", run, run.steps), run.device)
        part.update(image_facts(images[label]), seconds_per_image=round(seconds, 2), **peak_gib(run.device))
        if label == "fp8":
            part["quantize_chosen"] = (
                quantize_choice(run.device).value if run.device.type == "cuda" else "none"
            )
        del engine
    row["image_vs_bf16"] = image_difference(images["fp8"], images["bf16"])
    row["speedup_fp8"] = round(
        row["bf16"]["seconds_per_image"] / max(row["fp8"]["seconds_per_image"], 1e-9), 3
    )
    if run.device.type != "cuda":
        row["cpu_limits"] = "fp8 needs CUDA: quantize = 'auto' chose none here, so both images are float32"
    row["ok"] = all(row[k]["repeat_identical"] and row[k]["pixel_std"] > 0 for k in ("bf16", "fp8"))


def check_loras(run: Run, row: dict[str, Any]) -> None:
    """Two requests with different random LoRAs and one without, in a row through one engine
    (``lora_dirs`` set, as a self-hoster serves them): each image must equal the one the same
    LoRA (or none) gives alone, on an engine that never loaded another adapter, same seed."""
    from fluxserve.spec import LoraRef

    row.update(model="flux1-dev", size=run.size, steps=run.quick_steps)
    ckpt = run.checkpoints.path("flux1-dev")
    loras = run.checkpoints.path("loras")
    sets = {"none": (), "ink": (LoraRef("ink", 1.0),), "chalk": (LoraRef("chalk", 1.0),)}

    def image(engine: Any, name: str) -> Any:
        req = request(ckpt, "flux1-dev", run, run.quick_steps, loras=sets[name])
        return timed(engine, req, run.device)[0]

    free_memory()
    reset_peak(run.device)
    engine = make_engine(run, ckpt, "loras-a", lora_dirs=[loras])
    row["load_s"] = round(loaded(engine, ckpt, run.device), 2)
    start = time.perf_counter()
    alone = {"none": image(engine, "none"), "ink": image(engine, "ink")}  # nothing else loaded yet
    in_a_row = {name: image(engine, name) for name in ("chalk", "none", "ink")}
    row["in_a_row_s"] = round(time.perf_counter() - start, 2)
    del engine
    free_memory()
    engine = make_engine(run, ckpt, "loras-b", lora_dirs=[loras])
    loaded(engine, ckpt, run.device)
    alone["chalk"] = image(engine, "chalk")
    del engine
    row.update(peak_gib(run.device))
    row["order"] = "engine A: none, ink (alone), then chalk, none, ink in a row; engine B: chalk alone"
    row["equal_to_alone"] = {name: same_pixels(in_a_row[name], alone[name]) for name in sets}
    row["differences_when_not_equal"] = {
        name: image_difference(in_a_row[name], alone[name])
        for name in sets
        if not row["equal_to_alone"][name]
    }
    row["pixel_std"] = {name: image_facts(im)["pixel_std"] for name, im in alone.items()}
    row["lora_vs_none"] = {name: image_difference(alone[name], alone["none"]) for name in ("ink", "chalk")}
    row["lora_changes_image"] = {
        name: not same_pixels(alone[name], alone["none"]) for name in ("ink", "chalk")
    }
    row["ok"] = (
        all(row["equal_to_alone"].values())
        and all(row["lora_changes_image"].values())
        and all(std > 0 for std in row["pixel_std"].values())
    )


def check_kontext(run: Run, row: dict[str, Any]) -> None:
    """A Kontext edit with two input images, then a masked edit (the first image repainted on
    its right half, the second as the reference), through the engine's edit paths."""
    row.update(model="flux1-kontext-dev", size=run.size, steps=run.quick_steps)
    ckpt = run.checkpoints.path("flux1-kontext-dev")
    free_memory()
    reset_peak(run.device)
    engine = make_engine(run, ckpt, "kontext", quantize="auto")
    row["load_s"] = round(loaded(engine, ckpt, run.device), 2)
    inputs = [noise_image((run.size, run.size), 1), noise_image((run.size, run.size), 2)]
    model = "flux1-kontext-dev"
    edit, seconds = timed(engine, request(ckpt, model, run, run.quick_steps, images=list(inputs)), run.device)
    row["two_images"] = dict(image_facts(edit), seconds=round(seconds, 2))
    mask = right_half_mask((run.size, run.size))
    masked_req = request(ckpt, model, run, run.quick_steps, images=list(inputs), mask=mask)
    masked, seconds = timed(engine, masked_req, run.device)
    row["masked"] = dict(image_facts(masked), seconds=round(seconds, 2))
    row.update(peak_gib(run.device))
    del engine
    want = [run.size, run.size]
    row["ok"] = all(
        row[k]["image_size"] == want and row[k]["pixel_std"] > 0 for k in ("two_images", "masked")
    )


def check_klein(run: Run, row: dict[str, Any], steps: int) -> None:
    """FLUX.2 klein 4B text to image (``quantize = "auto"``: fp8 on an fp8 GPU)."""
    row.update(model="flux2-klein-4b", size=run.size, steps=steps)
    ckpt = run.checkpoints.path("flux2-klein-4b")
    free_memory()
    reset_peak(run.device)
    engine = make_engine(run, ckpt, "klein", quantize="auto")
    row["load_s"] = round(loaded(engine, ckpt, run.device), 2)
    timed(engine, request(ckpt, "flux2-klein-4b", run, 1, seed=1), run.device)  # warm-up
    image, seconds = timed(engine, request(ckpt, "flux2-klein-4b", run, steps), run.device)
    row.update(image_facts(image), seconds_per_image=round(seconds, 2), **peak_gib(run.device))
    del engine
    row["ok"] = row["image_size"] == [run.size, run.size] and row["pixel_std"] > 0
