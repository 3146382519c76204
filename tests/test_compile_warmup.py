"""Compile warm-up at start, the compile cache on disk, and the automatic speed defaults.

The server tests start ``fluxserve serve`` twice on one data directory with ``compile = true``
and a warm-up size, on a tiny FLUX.1 checkpoint: the first start compiles from scratch and
fills ``<data_dir>/compile-cache``; the second reads the compiled graphs back, and its first
request compiles nothing and gives the uncompiled image. A cold CPU inductor compile of even the
tiny transformer takes a minute or two (gcc builds every kernel): this module pays it once, in
the two tests marked ``slow``.
Compilations are counted from torch's own log (``TORCH_LOGS=dynamo``: one "torchdynamo start
tracing" line per graph dynamo traces).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_checkpoints import build_tiny_flux2_klein

from conftest import Server, poll_result
from fluxserve.engines import EngineRequest
from fluxserve.engines.checkpoints import speed_options
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from fluxserve.engines.sources import CheckpointSource
from fluxserve.engines.speed import SpeedOptions, auto_compile, auto_quantize, choose_quantize
from fluxserve.engines.warmup import WARMUP_STEPS, WarmupRun, warm_up
from fluxserve.settings import Settings

TRACE = "torchdynamo start tracing"
WARMUP = re.compile(
    r"compile warm-up (\S+) of .*: ([0-9.]+) s, (\d+) graphs compiled "
    r"\(compile cache: (\d+) hits, (\d+) misses\)"
)
PROMPT = "a red cat on a blue square"
REQUEST = {
    "prompt": PROMPT,
    "width": 256,
    "height": 256,
    "seed": 11,
    "steps": 3,
    "guidance": 3.0,
    "output_format": "png",
}


# -- automatic choices (unit level: the device facts are passed in) -------------------------


@pytest.mark.parametrize(
    ("device", "capability", "torchao", "expected"),
    [
        ("cpu", None, True, "none"),
        ("cuda", (9, 0), True, "fp8-dynamic"),  # Hopper
        ("cuda", (8, 9), True, "fp8-dynamic"),  # Ada
        ("cuda", (8, 0), True, "none"),  # Ampere: no fp8 tensor cores
        ("cuda", (9, 0), False, "none"),  # no torchao
    ],
)
def test_auto_quantize_picks_fp8_only_where_the_gpu_has_it(
    device: str, capability: tuple[int, int] | None, torchao: bool, expected: str
) -> None:
    choice = auto_quantize("auto", device, capability, torchao)
    assert choice.value == expected
    assert choice.reason.startswith("auto: ")
    if expected == "none" and device == "cuda":
        assert ("8.0" in choice.reason) if capability == (8, 0) else ("torchao" in choice.reason)


def test_auto_quantize_keeps_explicit_values_and_stays_off_where_unsafe() -> None:
    for value in ("none", "fp8", "int8", "nf4"):
        assert auto_quantize(value, "cuda", (8, 0), False).value == value  # type: ignore[arg-type]
    assert auto_quantize("auto", "cuda", (9, 0), True, has_loras=True).value == "none"
    assert auto_quantize("auto", "cuda", (9, 0), True, gguf=True).value == "none"
    # On this machine (no GPU) the real facts give none, and fp8 asked for explicitly stays fp8.
    assert choose_quantize("auto", torch.device("cpu"), False, False).value == "none"
    assert choose_quantize("fp8", torch.device("cpu"), False, False).value == "fp8"


def test_auto_compile_is_on_for_cuda_only() -> None:
    assert auto_compile(None, "cuda", has_loras=False).value is True
    assert auto_compile(None, "cpu", has_loras=False).value is False
    assert auto_compile(None, "cuda", has_loras=True).value is False
    assert auto_compile(None, "cuda", has_loras=False, memory_mode="sequential_offload").value is False
    assert auto_compile(None, "cuda", has_loras=False, memory_mode="model_offload").value is True
    assert auto_compile(True, "cpu", has_loras=True).value is True  # explicit wins
    assert auto_compile(False, "cuda", has_loras=False).value is False


def test_speed_settings_defaults_and_per_model_warmup_sizes(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, data_dir=tmp_path)
    assert (settings.compile, settings.quantize, settings.warmup_sizes) == (None, "auto", ["1024x1024"])
    options = speed_options(settings, "flux-dev")
    assert options.compile is None and options.warmup_sizes == ("1024x1024",)
    assert options.compile_cache_dir == str(tmp_path / "compile-cache")
    settings = Settings.load(
        environ={"FLUXSERVE_WARMUP_SIZES": "1024x1024, 768X1344", "FLUXSERVE_COMPILE": "0"},
        models={"flux-dev": {"warmup_sizes": ["512x512"], "quantize": "auto"}},
        compile_cache_dir=tmp_path / "kernels",
    )
    assert settings.compile is False
    assert speed_options(settings, "flux-pro").warmup_sizes == ("1024x1024", "768x1344")
    assert speed_options(settings, "flux-dev").warmup_sizes == ("512x512",)
    assert speed_options(settings, "flux-dev").compile_cache_dir == str(tmp_path / "kernels")
    for bad in ("1024", "1024x", "axb", "8x8", "1024x99999"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            Settings.load(environ={"FLUXSERVE_WARMUP_SIZES": bad})
    with pytest.raises(ValueError):
        Settings.load(environ={}, models={"flux-dev": {"warmup_sizes": ["big"]}})


# -- the warm-up's generations (eager here: what they run, not what they compile) ----------


def transformer_calls(checkpoint: Path, sizes: list[str]) -> tuple[int, list[WarmupRun]]:
    """Transformer calls of a warm-up of ``sizes`` on ``checkpoint`` loaded uncompiled (the
    warm-up is forced on: it runs the same generations whether or not the blocks compile)."""
    e = DiffusersFluxEngine(
        lambda _: CheckpointSource(str(checkpoint), speed=SpeedOptions(compile=False)), "cpu", "float32"
    )
    e.load("ckpt")
    loaded = e.loaded("ckpt")
    assert loaded is not None and not loaded.compiled
    assert warm_up(loaded, sizes, "ckpt") == []  # not compiled: nothing to warm
    calls = [0]
    loaded.pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    runs = warm_up(replace(loaded, compiled=True), sizes, "ckpt")
    return calls[0], runs


def test_warm_up_runs_each_size_through_the_request_paths(
    tiny_checkpoint: Path, tiny_flux_checkpoint: Path, tmp_path: Path
) -> None:
    # FLUX.1 Kontext: text to image and an edit per size, one pass per step; the first size
    # also as two images at once (the batch dimension).
    calls, runs = transformer_calls(tiny_checkpoint, ["64x64", "96x64"])
    assert calls == (2 * 2 + 1) * WARMUP_STEPS and [r.size for r in runs] == ["64x64", "96x64"]
    assert all(r.seconds > 0 and r.graphs == 0 for r in runs)
    # FLUX.2 klein: its edits take the reference as a list.
    klein = build_tiny_flux2_klein(tmp_path / "klein", seed=3)
    assert transformer_calls(klein, ["64x64"])[0] == 3 * WARMUP_STEPS
    # A true-CFG checkpoint (the embedded model's kind): the negative pass runs too.
    cfg = tmp_path / "true-cfg"
    shutil.copytree(tiny_flux_checkpoint, cfg)
    extra = json.loads((cfg / "fluxserve.json").read_text())
    (cfg / "fluxserve.json").write_text(json.dumps({**extra, "true_cfg": True}))
    assert transformer_calls(cfg, ["64x64"])[0] == 2 * 2 * WARMUP_STEPS
    assert transformer_calls(tiny_flux_checkpoint, ["64x64"])[0] == 2 * WARMUP_STEPS


# -- warm-up and the on-disk cache, through real servers ------------------------------------


def drain(server: Server) -> str:
    """Everything the server printed so far (its pipe is read without blocking)."""
    assert server.proc is not None and server.proc.stdout is not None
    while line := server.proc.stdout.readline():
        server.output.append(line)
    return "".join(server.output)


def compiled_server(data_dir: Path, checkpoint: Path) -> Server:
    import os

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLUXSERVE_", "TORCHINDUCTOR_", "TRITON_"))
    }
    env.update(
        FLUXSERVE_DEFAULT_CHECKPOINT=str(checkpoint),
        FLUXSERVE_COMPILE="1",
        FLUXSERVE_WARMUP_SIZES="64x64",
        FLUXSERVE_LOG_LEVEL="info",
        TORCH_LOGS="dynamo",
    )
    return Server(data_dir=data_dir, env=env)


@pytest.fixture(scope="module")
def restarted(
    tmp_path_factory: pytest.TempPathFactory, tiny_flux_checkpoint: Path
) -> Iterator[tuple[str, Server]]:
    """(the first start's log, a second server started on the same data directory)."""
    data_dir = tmp_path_factory.mktemp("data")
    first = compiled_server(data_dir, tiny_flux_checkpoint)
    try:
        first.start(timeout=600)  # a cold compile: slow on a busy CPU
        first_log = drain(first)
    finally:
        first.stop()
    second = compiled_server(data_dir, tiny_flux_checkpoint)
    try:
        second.start(timeout=600)
        yield first_log, second
    finally:
        second.stop()


def warmups(log: str) -> list[tuple[str, float, int, int, int]]:
    return [(m[1], float(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in WARMUP.finditer(log)]


# The module's fixture compiles the tiny transformer cold once (a minute or two on two cores)
# and starts two servers: the only proof of the warm-up through a server, and a tenth of the
# default run's time, so these two are `slow` (what they compile runs on CUDA only by default;
# test_warm_up_runs_each_size_through_the_request_paths checks the warm-up's generations).
@pytest.mark.slow
def test_the_compile_cache_is_filled_at_warm_up_and_a_restart_reads_it(restarted: tuple[str, Server]) -> None:
    first_log, second = restarted
    [(size, _, graphs, hits, misses)] = warmups(first_log)
    assert size == "64x64" and graphs >= 2 and misses >= 2 and hits == 0  # both block kinds compiled
    cache = second.data_dir / "compile-cache"
    assert any((cache / "fxgraph").rglob("*")), "no compiled graph on disk"
    [(_, _, graphs_again, hits_again, misses_again)] = warmups(drain(second))
    assert graphs_again == graphs  # dynamo traces again, but every graph comes from the cache
    assert hits_again == misses and misses_again == 0


@pytest.mark.slow
def test_warm_up_happens_at_start_not_on_the_first_request(
    restarted: tuple[str, Server], tiny_flux_checkpoint: Path
) -> None:
    _, server = restarted
    at_ready = drain(server).count(TRACE)
    assert at_ready >= 2  # the warm-up traced the blocks before /readyz said ready
    r = httpx.post(f"{server.base_url}/v1/flux-dev", json=REQUEST, timeout=30)
    assert r.status_code == 200, r.text
    result = poll_result(server.base_url, r.json()["id"], timeout=120)
    assert result["status"] == "Ready", result
    time.sleep(0.2)
    assert drain(server).count(TRACE) == at_ready, "the first request compiled"
    # Nor does a request for several images (the warm-up compiled the batch dimension too).
    r = httpx.post(
        f"{server.base_url}/v1/images/generations",
        json={"model": "flux-dev", "prompt": PROMPT, "n": 3, "size": "256x256"},
        timeout=120,
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 3, r.text
    time.sleep(0.2)
    assert drain(server).count(TRACE) == at_ready, "a request for three images compiled"
    served = np.asarray(Image.open(io.BytesIO(httpx.get(result["result"]["sample"]).content)).convert("RGB"))

    eager = DiffusersFluxEngine(
        lambda _: CheckpointSource(str(tiny_flux_checkpoint), speed=SpeedOptions(compile=False)),
        "cpu",
        "float32",
    )
    req = EngineRequest("ckpt", PROMPT, 256, 256, seed=11, steps=3, guidance=3.0)
    plain = np.asarray(eager.generate(req)[0].convert("RGB"))
    # Inductor fuses float32 arithmetic differently from eager: at most a rounding step apart.
    assert served.shape == plain.shape
    assert np.abs(served.astype(int) - plain.astype(int)).max() <= 2
