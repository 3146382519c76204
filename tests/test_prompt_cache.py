"""The prompt-embedding cache: repeated prompts skip the text encoders and give the same bytes
as an engine without the cache (n > 1, true-CFG negative prompt, LoRA sets, inpainting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoints import make_peft_lora

from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from fluxserve.loras import LoraLibrary
from fluxserve.spec import LoraRef


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> LoraLibrary:
    directory = tmp_path_factory.mktemp("loras")
    make_peft_lora(tiny_checkpoint, directory / "ink.safetensors", seed=1)
    return LoraLibrary([directory])


def engine(checkpoint: Path, loras: LoraLibrary, size: int) -> DiffusersFluxEngine:
    return DiffusersFluxEngine(lambda _: checkpoint, "cpu", "float32", loras=loras, prompt_cache_size=size)


def run(e: DiffusersFluxEngine, prompt: str, n: int = 1, **fields: object) -> list[bytes]:
    req = EngineRequest("ckpt", prompt, 64, 64, seed=3, steps=2, guidance=3.0, num_images=n, **fields)  # type: ignore[arg-type]
    return [np.asarray(im).tobytes() for im in e.generate(req)]


def test_cached_prompts_skip_the_encoders_and_give_the_same_bytes(
    tiny_checkpoint: Path, loras: LoraLibrary
) -> None:
    cached, plain = engine(tiny_checkpoint, loras, 32), engine(tiny_checkpoint, loras, 0)
    ink = (LoraRef("ink", 1.0),)
    red = Image.new("RGB", (64, 64), (200, 20, 20))
    mask = Image.new("L", (64, 64), 255)
    calls = [
        ("a red cat", {}),
        ("a red cat", {"n": 2}),
        ("a blue dog", {}),
        ("a red cat", {"loras": ink}),
        ("a red cat", {"loras": ink}),
        ("a red cat", {"images": [red]}),
        ("a red cat", {"images": [red], "mask": mask}),
    ]
    for prompt, fields in calls:
        n = int(fields.pop("n", 1))  # type: ignore[call-overload]
        assert run(cached, prompt, n, **fields) == run(plain, prompt, n, **fields), (prompt, fields)
    # Distinct (prompt, LoRA set) pairs: red cat, blue dog, red cat + ink; the tiny checkpoint is
    # not true-CFG, so there is no negative prompt to encode.
    assert cached.prompt_cache.misses == 3
    assert cached.prompt_cache.hits == len(calls) - 3
    assert plain.prompt_cache.hits == 0


def test_the_cache_is_bounded(tiny_checkpoint: Path, loras: LoraLibrary) -> None:
    e = engine(tiny_checkpoint, loras, 2)
    for prompt in ("one", "two", "three", "one"):
        run(e, prompt)
    assert (e.prompt_cache.hits, e.prompt_cache.misses) == (0, 4)  # "one" was evicted by "three"
    run(e, "one")
    assert e.prompt_cache.hits == 1


def test_true_cfg_checkpoints_cache_the_empty_negative_prompt_too(loras: LoraLibrary) -> None:
    from fluxserve.embedded import embedded_checkpoint

    shipped = embedded_checkpoint()
    assert shipped is not None
    cached, plain = engine(shipped, loras, 32), engine(shipped, loras, 0)
    for prompt in ("a red circle on a blue background", "a red circle on a blue background", "a star"):
        assert run(cached, prompt) == run(plain, prompt)
    assert (cached.prompt_cache.misses, cached.prompt_cache.hits) == (3, 3)  # prompt, "", star
