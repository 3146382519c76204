"""BFL's finetuned routes run with a LoRA from lora_dirs: finetune_id is its name,
finetune_strength its scale; my_finetunes and finetune_details list them in BFL's shapes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_checkpoints import make_peft_lora

from conftest import Server, poll_result

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def ft_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    loras = tmp_path_factory.mktemp("finetunes")
    make_peft_lora(tiny_checkpoint, loras / "my-finetune.safetensors", seed=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(FLUXSERVE_DEFAULT_CHECKPOINT=str(tiny_checkpoint), FLUXSERVE_LOG_LEVEL="warning")
    env["FLUXSERVE_LORA_DIRS"] = str(loras)
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def image(base_url: str, route: str, **fields: Any) -> bytes:
    body = {"prompt": PROMPT, "seed": 11, "aspect_ratio": "1:1", "steps": 3, "output_format": "png", **fields}
    r = httpx.post(f"{base_url}/v1/{route}", json=body)
    assert r.status_code == 200, r.text
    result = poll_result(base_url, r.json()["id"])
    assert result["status"] == "Ready", result
    return httpx.get(result["result"]["sample"]).content


def test_finetuned_route_is_the_lora_at_that_strength(ft_server: Server) -> None:
    url = ft_server.base_url
    tuned = image(url, "flux-pro-1.1-ultra-finetuned", finetune_id="my-finetune", finetune_strength=0.9)
    assert tuned == image(url, "flux-pro-1.1-ultra", loras=[{"name": "my-finetune", "scale": 0.9}])
    assert tuned != image(url, "flux-pro-1.1-ultra")
    # BFL's default strength is 1.2.
    default = image(url, "flux-kontext-pro-finetuned", finetune_id="my-finetune")
    assert default == image(url, "flux-kontext-pro", loras=[{"name": "my-finetune", "scale": 1.2}])
    # Strength 0: no influence.
    assert image(url, "flux-kontext-pro-finetuned", finetune_id="my-finetune", finetune_strength=0) == image(
        url, "flux-kontext-pro"
    )


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"finetune_id": "nope"}, "finetune_id"),
        ({"finetune_id": "../my-finetune"}, "finetune_id"),
        ({}, "finetune_id"),
        ({"finetune_id": "my-finetune", "finetune_strength": 2.5}, "finetune_strength"),
    ],
)
def test_bad_finetunes_are_422(ft_server: Server, fields: dict[str, Any], where: str) -> None:
    r = httpx.post(f"{ft_server.base_url}/v1/flux-pro-1.1-ultra-finetuned", json={"prompt": PROMPT, **fields})
    assert r.status_code == 422, r.text
    assert where in str(r.json()["detail"])


def test_finetune_listing_in_bfls_shapes(ft_server: Server) -> None:
    url = ft_server.base_url
    assert httpx.get(f"{url}/v1/my_finetunes").json() == {"finetunes": ["my-finetune"]}
    details = httpx.get(f"{url}/v1/finetune_details", params={"finetune_id": "my-finetune"}).json()
    assert details["finetune_details"]["finetune_id"] == "my-finetune"
    r = httpx.get(f"{url}/v1/finetune_details", params={"finetune_id": "nope"})
    assert r.status_code == 404 and "my_finetunes" in r.json()["detail"]
