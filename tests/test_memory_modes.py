"""Memory-mode selection and quantization refusals, with given figures (no device needed)."""

from __future__ import annotations

import pytest
import torch

from fluxserve.engines.memory import GIB, NotEnoughMemoryError, plan_memory, quantization_config

# FLUX.1 dev in bfloat16: transformer 23.8 GB, T5 9.5 GB, CLIP 0.25 GB, VAE 0.17 GB.
FLUX_DEV = {
    "transformer": int(22.2 * GIB),
    "text_encoder_2": int(8.9 * GIB),
    "text_encoder": int(0.23 * GIB),
    "vae": int(0.16 * GIB),
}


@pytest.mark.parametrize(
    ("free_gib", "mode"),
    [
        (79, "gpu"),  # an 80 GB card holds everything
        (40, "gpu"),
        (30, "model_offload"),  # a 32 GB card: one model at a time
        (23.5, "group_offload"),  # a 24 GB card: the transformer does not fit whole
        (3.5, "sequential_offload"),
    ],
)
def test_auto_picks_the_fastest_mode_that_fits(free_gib: float, mode: str) -> None:
    choice = plan_memory("auto", int(free_gib * GIB), FLUX_DEV, "cuda")
    assert choice.mode == mode
    assert "GiB free" in choice.reason


def test_auto_refuses_when_nothing_fits() -> None:
    with pytest.raises(NotEnoughMemoryError, match="sequential_offload"):
        plan_memory("auto", 1 * GIB, FLUX_DEV, "cuda")


def test_a_configured_mode_that_does_not_fit_names_one_that_would() -> None:
    with pytest.raises(NotEnoughMemoryError) as err:
        plan_memory("gpu", 24 * GIB, FLUX_DEV, "cuda")
    assert "memory = 'gpu'" in str(err.value)
    assert "memory = 'group_offload' would fit" in str(err.value)
    assert plan_memory("model_offload", 30 * GIB, FLUX_DEV, "cuda").mode == "model_offload"


def test_cpu_and_unknown_free_memory() -> None:
    assert plan_memory("auto", None, FLUX_DEV, "cpu").mode == "gpu"
    assert plan_memory("sequential_offload", 0, FLUX_DEV, "cpu").mode == "gpu"
    assert plan_memory("auto", None, FLUX_DEV, "mps").mode == "gpu"


@pytest.mark.parametrize(("quantize", "needs"), [("fp8", "CUDA GPU"), ("nf4", "bitsandbytes")])
def test_quantization_the_cpu_cannot_do_is_refused_by_name(quantize: str, needs: str) -> None:
    with pytest.raises(RuntimeError, match=needs):
        quantization_config(quantize, torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    assert quantization_config("none", torch.device("cpu"), torch.float32) is None
