"""True CFG's two transformer calls a step run as one batch of two (``paired_guidance``): the
engine pairs them for the embedded model, and the pairs give what the two calls give."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from PIL import Image

from fluxserve.embedded import embedded_checkpoint
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from fluxserve.engines.paired_guidance import paired_guidance

CKPT = embedded_checkpoint()
pytestmark = pytest.mark.skipif(CKPT is None, reason="this build ships no embedded checkpoint")


@contextmanager
def transformer_batches(transformer: Any) -> Iterator[list[int]]:
    """The batch size of every real transformer forward pass (seen at its first layer)."""
    sizes: list[int] = []
    handle = transformer.x_embedder.register_forward_pre_hook(lambda _m, a: sizes.append(a[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def engine() -> DiffusersFluxEngine:
    assert CKPT is not None
    engine = DiffusersFluxEngine(lambda name: CKPT, device="cpu")
    engine.load("embedded")
    return engine


def test_the_engine_runs_true_cfg_as_one_call_a_step(engine: DiffusersFluxEngine) -> None:
    loaded = engine.loaded("embedded")
    assert loaded is not None and loaded.true_cfg
    with transformer_batches(loaded.pipe.transformer) as sizes:
        engine.generate(EngineRequest("embedded", "a red star in the middle", 256, 256, 1, 6, 4.0))
    assert sizes == [1, 1, 2, 2, 2, 2, 2]  # the first step shows the unconditional inputs

    with transformer_batches(loaded.pipe.transformer) as sizes:  # guidance 1: no CFG, one call a step
        engine.generate(EngineRequest("embedded", "a red star in the middle", 256, 256, 1, 6, 1.0))
    assert sizes == [1] * 6
    assert "forward" not in vars(loaded.pipe.transformer)  # the wrapper is gone after each run


@pytest.mark.parametrize("edit", [False, True], ids=["text-to-image", "edit"])
def test_pairs_give_the_results_of_two_calls(engine: DiffusersFluxEngine, edit: bool) -> None:
    loaded = engine.loaded("embedded")
    assert loaded is not None
    pipe = loaded.pipe
    kwargs: dict = dict(
        prompt=["a large blue circle in the top left", "a small yellow square on the right"],
        negative_prompt=["", ""],
        true_cfg_scale=4.0,
        height=64,
        width=64,
        num_inference_steps=5,
        num_images_per_prompt=2,
        max_sequence_length=loaded.max_sequence_length,
        max_area=64 * 64,  # else the Kontext pipeline samples at its 1024x1024 default
        output_type="latent",
    )
    if edit:
        kwargs.update(image=Image.new("RGB", (64, 64), (200, 30, 30)), _auto_resize=False)

    def run(paired: bool) -> tuple[torch.Tensor, list[int]]:
        generator = torch.Generator("cpu").manual_seed(7)
        with torch.inference_mode(), transformer_batches(pipe.transformer) as sizes:
            if paired:
                with paired_guidance(pipe.transformer) as pairing:
                    latents = pipe(generator=generator, **kwargs).images
                assert pairing.paired_steps == 4
            else:
                latents = pipe(generator=generator, **kwargs).images
        return latents, sizes

    plain, plain_sizes = run(paired=False)
    paired, paired_sizes = run(paired=True)
    assert plain_sizes == [4] * 10 and paired_sizes == [4, 4] + [8] * 4
    assert plain.shape == paired.shape
    # One batch of eight against two of four: the same arithmetic up to float rounding.
    torch.testing.assert_close(paired, plain, atol=1e-4, rtol=1e-4)
    assert not torch.equal(plain[0], plain[1])  # the four images differ: nothing was mixed up


def test_calls_that_are_not_pairs_run_unchanged(engine: DiffusersFluxEngine) -> None:
    """A pipeline call without CFG inside the block: each call gets its own answer."""
    loaded = engine.loaded("embedded")
    assert loaded is not None
    pipe = loaded.pipe
    kwargs: dict = dict(
        prompt="a green triangle at the bottom",
        height=64,
        width=64,
        num_inference_steps=6,
        max_sequence_length=loaded.max_sequence_length,
        max_area=64 * 64,
        output_type="latent",
    )
    with torch.inference_mode():
        plain = pipe(generator=torch.Generator("cpu").manual_seed(3), **kwargs).images
        with paired_guidance(pipe.transformer):
            wrapped = pipe(generator=torch.Generator("cpu").manual_seed(3), **kwargs).images
    torch.testing.assert_close(wrapped, plain, atol=1e-4, rtol=1e-4)
