"""Each checkpoint runs with its own family's defaults (steps, guidance) unless settings say
otherwise: FLUX.1 dev-like vs schnell-like, Kontext, FLUX.2 klein distilled vs base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from tiny_checkpoints import build_tiny_flux2_klein

from conftest import poll_result
from fluxserve.catalog import ModelCatalog
from fluxserve.engines.checkpoints import apply_checkpoint_defaults
from fluxserve.engines.families import checkpoint_defaults
from fluxserve.settings import Settings


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("ckpt") / "klein", seed=3)


@pytest.fixture(scope="module")
def variants(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_flux_checkpoint: Path, klein: Path
):
    root = tmp_path_factory.mktemp("variants")
    schnell = Path(shutil.copytree(tiny_flux_checkpoint, root / "schnell"))
    _edit_json(schnell / "transformer" / "config.json", guidance_embeds=False)
    klein_base = Path(shutil.copytree(klein, root / "klein-base"))
    _edit_json(klein_base / "model_index.json", is_distilled=False)
    return {
        "kontext": tiny_checkpoint,
        "dev": tiny_flux_checkpoint,
        "schnell": schnell,
        "klein": klein,
        "klein-base": klein_base,
    }


def test_family_defaults_follow_the_checkpoint(variants) -> None:  # type: ignore[no-untyped-def]
    assert checkpoint_defaults(variants["kontext"]) == (28, 2.5)
    assert checkpoint_defaults(variants["dev"]) == (28, 3.5)
    assert checkpoint_defaults(variants["schnell"]) == (4, 0.0)
    assert checkpoint_defaults(variants["klein"]) == (4, 1.0)
    assert checkpoint_defaults(variants["klein-base"]) == (50, 4.0)
    # A single-file FLUX.1 transformer decides guided or not by its own tensors, not its base's.
    assert checkpoint_defaults(variants["dev"], ["double_blocks.0.img_attn.qkv.weight"]) == (4, 0.0)
    assert checkpoint_defaults(variants["schnell"], ["guidance_in.in_layer.weight"]) == (28, 3.5)


def test_declared_defaults_win(variants, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = Path(shutil.copytree(variants["klein"], tmp_path / "declared"))
    (ckpt / "fluxserve.json").write_text(json.dumps({"default_steps": 7, "default_guidance": 2.0}))
    assert checkpoint_defaults(ckpt) == (7, 2.0)


def test_catalog_takes_family_defaults_except_where_settings_name_them(variants) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(
        environ={},
        models={
            "flux-dev": {"checkpoint": str(variants["schnell"])},
            "flux-pro": {"checkpoint": str(variants["klein-base"]), "steps": 12},
            "flux-kontext-pro": {"checkpoint": str(variants["klein"]), "guidance": 1.5},
            "flux-pro-1.1": {"checkpoint": "nobody/not-downloaded"},
        },
    )
    catalog = ModelCatalog.from_settings(settings)
    before = catalog.get("flux-pro-1.1")
    apply_checkpoint_defaults(settings, catalog)
    got = {
        mid: (catalog.get(mid).steps, catalog.get(mid).guidance)
        for mid in ("flux-dev", "flux-pro", "flux-kontext-pro")
    }  # type: ignore[union-attr]
    assert got == {"flux-dev": (4, 0.0), "flux-pro": (12, 4.0), "flux-kontext-pro": (4, 1.5)}
    assert catalog.get("flux-pro-1.1") == before  # not on this machine yet: unchanged until loaded


def test_a_job_without_steps_runs_its_family_default(make_server, variants) -> None:  # type: ignore[no-untyped-def]
    models = {"flux-dev": {"checkpoint": str(variants["schnell"])}}
    srv = make_server(models=json.dumps(models))
    r = httpx.post(
        f"{srv.base_url}/v1/flux-dev", json={"prompt": "a red square", "width": 256, "height": 256}
    )
    assert r.status_code == 200, r.text
    assert poll_result(srv.base_url, r.json()["id"])["status"] == "Ready"
    jobs = httpx.get(f"{srv.base_url}/v1/jobs").json()["data"]
    assert [(j["steps"], j["guidance"]) for j in jobs] == [(4, 0.0)]
