"""Speed options on CPU: fused QKV, a channels-last VAE and another attention backend keep the
image (within float error), step caching skips transformer work, options come from settings per
model, and fused QKV refuses to hide LoRAs. Compile: tests/test_compile_warmup.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fluxserve.engines import EngineRequest
from fluxserve.engines.checkpoints import speed_options
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from fluxserve.engines.sources import CheckpointError, CheckpointSource
from fluxserve.engines.speed import SpeedOptions
from fluxserve.loras import LoraLibrary
from fluxserve.settings import Settings


def engine(checkpoint: Path, speed: SpeedOptions, loras: LoraLibrary | None = None) -> DiffusersFluxEngine:
    return DiffusersFluxEngine(
        lambda _: CheckpointSource(str(checkpoint), speed=speed), "cpu", "float32", loras=loras
    )


def image(e: DiffusersFluxEngine, steps: int = 8) -> np.ndarray:
    req = EngineRequest("ckpt", "a red cat on a blue square", 64, 64, seed=5, steps=steps, guidance=3.0)
    return np.asarray(e.generate(req)[0]).astype(float)


def test_fused_qkv_gives_the_same_image_within_float_error(tiny_checkpoint: Path) -> None:
    plain, fused = (
        engine(tiny_checkpoint, SpeedOptions()),
        engine(tiny_checkpoint, SpeedOptions(fuse_qkv=True)),
    )
    a, b = image(plain), image(fused)
    loaded = fused.loaded("ckpt")
    assert loaded is not None and loaded.pipe.transformer.transformer_blocks[0].attn.fused_projections
    assert np.abs(a - b).max() <= 2  # 8-bit pixels: at most a rounding step or two apart


def test_channels_last_vae_and_math_attention_give_the_same_image_within_float_error(
    tiny_checkpoint: Path,
) -> None:
    import torch

    plain = image(engine(tiny_checkpoint, SpeedOptions()))  # CPU default: neither option
    last = engine(tiny_checkpoint, SpeedOptions(channels_last=True))
    assert np.abs(image(last) - plain).max() <= 2  # a rounding step or two, as fused QKV
    loaded = last.loaded("ckpt")
    assert loaded is not None
    conv = loaded.pipe.vae.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    math = image(engine(tiny_checkpoint, SpeedOptions(attention_backend="_native_math")))
    assert np.abs(math - plain).max() <= 2


def test_first_block_cache_skips_transformer_blocks(tiny_flux_checkpoint: Path) -> None:
    def last_block_calls(e: DiffusersFluxEngine) -> int:
        e.load("ckpt")
        loaded = e.loaded("ckpt")
        assert loaded is not None
        calls = [0]
        loaded.pipe.transformer.single_transformer_blocks[-1].proj_out.register_forward_hook(
            lambda *_: calls.__setitem__(0, calls[0] + 1)
        )
        image(e, steps=12)
        return calls[0]

    assert last_block_calls(engine(tiny_flux_checkpoint, SpeedOptions())) == 12
    # A lenient threshold: steps whose first block barely changed reuse the cached residual.
    assert (
        0
        < last_block_calls(engine(tiny_flux_checkpoint, SpeedOptions(cache="fbcache", cache_threshold=0.5)))
        < 12
    )


def test_magcache_runs_with_flux1s_ratios_and_taylorseer_refreshes_every_n_steps(
    tiny_flux_checkpoint: Path,
) -> None:
    plain = image(engine(tiny_flux_checkpoint, SpeedOptions()), steps=12)
    for options in (SpeedOptions(cache="magcache", cache_threshold=0.5), SpeedOptions(cache="taylorseer")):
        cached = image(engine(tiny_flux_checkpoint, options), steps=12)
        assert cached.shape == plain.shape and cached.std() > 1  # an image, not a blank page


def test_step_caching_needs_a_pipeline_that_supports_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from tiny_checkpoints import build_tiny_flux2_klein

    e = engine(tiny_checkpoint, SpeedOptions(cache="fbcache"))  # FLUX.1 Kontext
    with pytest.raises(CheckpointError, match="FluxKontextPipeline does not"):
        e.load("ckpt")
    klein = build_tiny_flux2_klein(tmp_path / "klein")
    # diffusers' First Block Cache fails inside FLUX.2 klein's transformer: refused at load,
    # with the cache that does run there named.
    with pytest.raises(
        CheckpointError, match="Flux2KleinPipeline does not: use cache = 'none' or 'taylorseer'"
    ):
        engine(klein, SpeedOptions(cache="fbcache")).load("ckpt")
    req = EngineRequest("ckpt", "a red circle", 64, 64, seed=1, steps=4, guidance=1.0)
    assert engine(klein, SpeedOptions(cache="taylorseer", cache_threshold=2)).generate(req)


def test_a_step_cache_turns_automatic_compile_off() -> None:
    from fluxserve.engines.speed import auto_compile

    assert auto_compile(None, "cuda", has_loras=False, step_cache=True).value is False
    assert auto_compile(True, "cuda", has_loras=False, step_cache=True).value is True  # explicit wins


def test_fused_qkv_refuses_to_hide_loras(tiny_checkpoint: Path, tmp_path: Path) -> None:
    e = engine(tiny_checkpoint, SpeedOptions(fuse_qkv=True), LoraLibrary([tmp_path]))
    with pytest.raises(CheckpointError, match="fuse_qkv hides the LoRA layers"):
        e.load("ckpt")


def test_speed_options_come_from_settings_per_model() -> None:
    settings = Settings.load(
        environ={"FLUXSERVE_CACHE": "fbcache", "FLUXSERVE_CACHE_THRESHOLD": "0.08", "FLUXSERVE_COMPILE": "1"},
        models={"flux-dev": {"cache": "taylorseer", "cache_threshold": 4}},
    )
    cache_dir = str(settings.data_dir / "compile-cache")
    sizes = ("1024x1024",)
    assert speed_options(settings, "flux-kontext-pro") == SpeedOptions(
        compile=True, cache="fbcache", cache_threshold=0.08, warmup_sizes=sizes, compile_cache_dir=cache_dir
    )
    assert speed_options(settings, "flux-dev") == SpeedOptions(
        compile=True, cache="taylorseer", cache_threshold=4, warmup_sizes=sizes, compile_cache_dir=cache_dir
    )
    with pytest.raises(ValueError):
        Settings.load(environ={"FLUXSERVE_CACHE": "teacache"})
