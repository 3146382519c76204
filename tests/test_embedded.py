"""The shipped embedded model: loads offline, keeps its figures, edits, serves by default."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import Server, poll_result
from fluxserve.embedded import embedded_checkpoint
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from training.embedded.evaluate import score, smoke_figures
from training.embedded.scenes import Obj, Scene, layout, render

CKPT = embedded_checkpoint()


def test_checkpoint_ships_and_is_small() -> None:
    assert CKPT is not None, "the package must ship src/fluxserve/embedded/checkpoint"
    size = sum(p.stat().st_size for p in CKPT.rglob("*") if p.is_file())
    assert size <= 30 * 1024 * 1024
    index = json.loads((CKPT / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]


@pytest.fixture(scope="module")
def engine() -> DiffusersFluxEngine:
    os.environ["HF_HUB_OFFLINE"] = "1"  # any attempt to reach a hub would fail loudly
    e = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    e.load(str(CKPT))
    return e


def test_regression_figures_hold(engine: DiffusersFluxEngine) -> None:
    assert CKPT is not None
    shipped = json.loads((CKPT / "fluxserve.json").read_text())["smoke_figures"]
    got = smoke_figures(CKPT)
    slack = 1 / shipped["n"]  # one case, for float differences between machines
    for key in ("background", "colour", "all"):
        assert got[key] >= shipped[key] - slack, (key, got, shipped)


def test_seeds_reproduce_bit_for_bit(engine: DiffusersFluxEngine) -> None:
    req = EngineRequest(str(CKPT), "a large green star on a black background", 128, 96, 5, 12, 4.0)
    a, b = engine.generate(req)[0], engine.generate(req)[0]
    assert a.tobytes() == b.tobytes()


def test_recolour_edit_runs_through_the_kontext_path(engine: DiffusersFluxEngine) -> None:
    scene = layout(Scene((Obj("circle", "red", "large", "in the center"),), "white"), 256, 128, None)  # type: ignore[arg-type]
    assert scene is not None
    meta = json.loads((CKPT / "fluxserve.json").read_text())  # type: ignore[operator]
    req = EngineRequest(
        str(CKPT),
        "make the circle blue",
        256,
        128,
        7,
        meta["default_steps"],
        meta["default_guidance"],
        images=[render(scene, 256, 128)],
    )
    out = engine.generate(req)[0]
    plain = engine.generate(
        EngineRequest(
            str(CKPT), "make the circle blue", 256, 128, 7, meta["default_steps"], meta["default_guidance"]
        )
    )[0]
    assert out.size == (256, 128)
    assert out.tobytes() != plain.tobytes()  # the input image reached the transformer
    # ... and the edit did what it says: the circle is blue now, the background still white.
    target = Scene((replace(scene.objects[0], colour="blue"),), "white")
    got = score(target, out)
    assert got["background"] and got["colour"], got


def test_server_uses_the_embedded_model_by_default(tmp_path: Path, engine: DiffusersFluxEngine) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    # The server never imports the training code (it is not in the wheel): here it cannot.
    blocker = tmp_path / "no-training"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['training'] = None\n")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
    srv = Server(data_dir=tmp_path / "data", env=env)
    srv.start()
    try:
        prompt = "a large yellow square on a blue background"
        r = httpx.post(
            f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": prompt, "seed": 3, "aspect_ratio": "4:3"}
        )
        result = poll_result(srv.base_url, r.json()["id"])
        served = Image.open(io.BytesIO(httpx.get(result["result"]["sample"]).content)).convert("RGB")
    finally:
        srv.stop()
    meta = json.loads((CKPT / "fluxserve.json").read_text())  # type: ignore[operator]
    w, h = served.size
    direct = engine.generate(
        EngineRequest(str(CKPT), prompt, w, h, 3, meta["default_steps"], meta["default_guidance"])
    )[0]
    assert served.tobytes() == direct.tobytes()  # the same model, steps and guidance
    assert not (tmp_path / "data" / "models").exists()  # no fallback checkpoint was built
