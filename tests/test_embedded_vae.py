"""The embedded model's autoencoder: its round trip keeps shapes, and the decoder-sharpening
tools (``training.embedded.decoder``) keep the latent space and the diffusers layout.

No training here: the figures come from the shipped weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fluxserve.embedded import embedded_checkpoint
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from training.embedded.decoder import deepen, edge_mask, export, shipped_vae
from training.embedded.evaluate import vae_roundtrip

CKPT = embedded_checkpoint()


# The shipped autoencoder's round trip on the first 40 scenes of the bench set (seed 5), less one
# scene for float differences between machines. The shipped decoder (layers_per_block 2, 3,222
# more steps with --hard-share 0.35) scores shape 0.925 there; the two before it 0.875 (the
# first sharpened one) and 0.675 (layers_per_block 1), so this fails on both. The gate,
# shape >= 95 % on the 120-scene set of bench/vae_roundtrip.py, is not reached yet; raise this
# floor with each better decoder.
SHAPE_FLOOR = 0.9


def test_shipped_round_trip_keeps_shape() -> None:
    assert CKPT is not None
    figures = vae_roundtrip(shipped_vae(CKPT).eval(), n=40)
    assert figures["shape"] >= SHAPE_FLOOR and figures["background"] == 1.0, figures


def test_deepening_starts_as_the_same_function() -> None:
    assert CKPT is not None
    vae = shipped_vae(CKPT).eval()
    deeper = deepen(shipped_vae(CKPT), vae.config["layers_per_block"] + 1).eval()
    assert deeper.config["layers_per_block"] == vae.config["layers_per_block"] + 1
    x = torch.rand(2, 3, 48, 80) * 2 - 1
    with torch.no_grad():
        za, zb = vae.encode(x).latent_dist.mode(), deeper.encode(x).latent_dist.mode()
        assert torch.equal(za, zb)  # the latent space, so the transformer, is unchanged
        assert torch.allclose(vae.decode(za).sample, deeper.decode(zb).sample, atol=1e-6)


def test_edge_mask_marks_outlines_only() -> None:
    x = -torch.ones(1, 3, 16, 16)
    x[:, 0, 4:12, 4:12] = 1.0  # a red square on black
    edges = edge_mask(x)[0, 0]
    assert edges[8, 8] == 0 and edges[0, 0] == 0 and edges[4, 8] == 1 and edges[3, 8] == 1
    assert edges.sum() == 10 * 10 - 6 * 6


def test_export_writes_a_checkpoint_the_engine_loads(tmp_path: Path) -> None:
    """An exported decoder (here: the shipped weights, deepened) lands in a copy of the
    checkpoint that the engine serves, with the same latent scaling; same seed, same image."""
    assert CKPT is not None
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = tmp_path / "work"
    work.mkdir()
    layers = json.loads((CKPT / "vae" / "config.json").read_text())["layers_per_block"] + 1
    torch.save(deepen(shipped_vae(CKPT), layers).state_dict(), work / "best.pt")
    import argparse

    out = tmp_path / "checkpoint"
    export(argparse.Namespace(checkpoint=CKPT, work=work, export=out, layers=layers, latest=False))
    new_cfg = json.loads((out / "vae" / "config.json").read_text())
    old_cfg = json.loads((CKPT / "vae" / "config.json").read_text())
    assert new_cfg["scaling_factor"] == old_cfg["scaling_factor"]
    assert new_cfg["shift_factor"] == old_cfg["shift_factor"]
    assert new_cfg["layers_per_block"] == old_cfg["layers_per_block"] + 1
    assert (out / "transformer").is_dir() and (out / "fluxserve.json").is_file()
    images = []
    for path in (CKPT, out):
        engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
        engine.load(str(path))
        req = EngineRequest(str(path), "a large green star on a black background", 64, 64, 5, 4, 4.0)
        images.append(torch.tensor(list(engine.generate(req)[0].tobytes()), dtype=torch.float32))
    assert (images[0] - images[1]).abs().mean() < 2.0  # fp16 weights: near, not bit-equal


@pytest.mark.parametrize("extra", [-1, 0, 2])
def test_deepen_never_shrinks(extra: int) -> None:
    assert CKPT is not None
    have = json.loads((CKPT / "vae" / "config.json").read_text())["layers_per_block"]
    vae = deepen(shipped_vae(CKPT), have + extra)
    assert vae.config["layers_per_block"] == have + max(0, extra)
