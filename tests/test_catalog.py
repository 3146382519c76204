"""The model catalog: built-in ids, the embedded model's defaults, overrides, one price table."""

from __future__ import annotations

import pytest

from fluxserve.catalog import BUILTIN_CHECKPOINT, ModelCatalog, builtin_defaults
from fluxserve.prices import LIST_PRICES_USD
from fluxserve.settings import ModelOverride, Settings


def test_every_builtin_id_is_priced_from_the_one_table() -> None:
    catalog = ModelCatalog.from_settings(Settings())
    assert set(catalog.ids()) == set(LIST_PRICES_USD)
    for entry in catalog:
        assert entry.price == LIST_PRICES_USD[entry.id]
        assert entry.checkpoint == BUILTIN_CHECKPOINT
    assert {e.id for e in catalog if not e.bfl_route} >= {"gpt-image-1", "dall-e-3"}


def test_embedded_defaults_apply_max_models_get_more_steps() -> None:
    declared = builtin_defaults()
    assert declared is not None
    steps, guidance = declared
    catalog = ModelCatalog.from_settings(Settings())
    pro, mx = catalog.get("flux-kontext-pro"), catalog.get("flux-kontext-max")
    assert pro is not None and mx is not None
    assert (pro.steps, pro.guidance) == (steps, guidance)
    assert mx.steps == round(steps * 1.5)


def test_overrides_and_new_models() -> None:
    settings = Settings(
        default_checkpoint="/models/flux",
        models={
            "flux-dev": ModelOverride(checkpoint="/models/dev", steps=20, price=0.01),
            "my-model": ModelOverride(family="pro"),
        },
    )
    catalog = ModelCatalog.from_settings(settings)
    dev, mine, kontext = catalog.get("flux-dev"), catalog.get("my-model"), catalog.get("flux-kontext-pro")
    assert dev is not None and (dev.checkpoint, dev.steps, dev.price) == ("/models/dev", 20, 0.01)
    assert mine is not None and (mine.family, mine.checkpoint, mine.default_output_format) == (
        "pro",
        "/models/flux",
        "jpeg",
    )
    assert kontext is not None and kontext.checkpoint == "/models/flux" and kontext.steps == 28
    assert catalog.checkpoints() == {"/models/dev", "/models/flux"}


def test_a_new_flux2_model() -> None:
    catalog = ModelCatalog.from_settings(Settings(models={"my-flux2": ModelOverride(family="flux2")}))
    mine = catalog.get("my-flux2")
    assert mine is not None and mine.family == "flux2" and mine.input_limit == 8 and mine.takes_images


def test_a_new_model_needs_a_family() -> None:
    with pytest.raises(ValueError, match="family"):
        ModelCatalog.from_settings(Settings(models={"mystery": ModelOverride()}))
