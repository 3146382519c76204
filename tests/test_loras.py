"""Per-request LoRA through both protocols: adapters made here for the tiny test checkpoint, in
diffusers/PEFT and kohya layouts, served from ``lora_dirs``."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from openai import BadRequestError, OpenAI
from safetensors.torch import save_file
from tiny_checkpoints import make_kohya_lora, make_peft_lora

from conftest import Server, poll_result

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("loras-a"), tmp_path_factory.mktemp("loras-b")
    make_peft_lora(tiny_checkpoint, first / "ink.safetensors", seed=1)
    make_kohya_lora(tiny_checkpoint, second / "kohya-style.safetensors", seed=2)
    make_peft_lora(tiny_checkpoint, second / "ink.safetensors", seed=9)  # shadowed by the first dir
    (first / "notes.txt").write_text("not an adapter")
    # Right file type, wrong model: its layers exist nowhere in the checkpoint.
    save_file(
        {
            "transformer.nowhere.lora_A.weight": torch.ones(2, 8),
            "transformer.nowhere.lora_B.weight": torch.ones(8, 2),
        },
        str(second / "wrong-model.safetensors"),
    )
    return first, second


@pytest.fixture(scope="module")
def lora_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, lora_dirs: tuple[Path, Path]
) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_DEFAULT_CHECKPOINT"] = str(tiny_checkpoint)
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    env["FLUXSERVE_LORA_DIRS"] = ":".join(str(d) for d in lora_dirs)
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def bfl_image(base_url: str, loras: list[dict[str, Any]] | None = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {"prompt": PROMPT, "seed": 7, "aspect_ratio": "1:1", "steps": 4, **fields}
    if loras is not None:
        body["loras"] = loras
    r = httpx.post(f"{base_url}/v1/flux-kontext-pro", json=body)
    assert r.status_code == 200, r.text
    result = poll_result(base_url, r.json()["id"])
    assert result["status"] == "Ready", result
    return httpx.get(result["result"]["sample"]).content


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_lists_adapters_by_name_first_directory_wins(lora_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{lora_server.base_url}/v1/loras")
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["name"] for d in data] == ["ink", "kohya-style", "wrong-model"]
    assert all(d["size_bytes"] > 0 for d in data)


def test_lora_changes_the_image_and_scale_zero_is_none(lora_server) -> None:  # type: ignore[no-untyped-def]
    url = lora_server.base_url
    plain = bfl_image(url)
    with_ink = bfl_image(url, [{"name": "ink", "scale": 1.0}])
    half_ink = bfl_image(url, [{"name": "ink", "scale": 0.5}])
    zero_ink = bfl_image(url, [{"name": "ink", "scale": 0.0}])
    kohya = bfl_image(url, [{"name": "kohya-style"}])
    assert len({digest(plain), digest(with_ink), digest(half_ink), digest(kohya)}) == 4
    assert zero_ink == plain
    assert bfl_image(url) == plain  # after adapters ran, the base model is unchanged


def test_alternating_adapters_give_the_bytes_of_each_run_alone(make_server, lora_dirs) -> None:  # type: ignore[no-untyped-def]
    dirs = ":".join(str(d) for d in lora_dirs)
    ink, kohya = [{"name": "ink", "scale": 0.8}], [{"name": "kohya-style", "scale": 1.2}]
    both = [{"name": "ink", "scale": 0.8}, {"name": "kohya-style", "scale": 1.2}]
    # Each adapter alone, on a server of its own that never loaded the other.
    alone_ink = bfl_image(make_server(lora_dirs=dirs).base_url, ink)
    alone_kohya = bfl_image(make_server(lora_dirs=dirs).base_url, kohya)
    # One server, cache of one adapter: every switch unloads the other one.
    mixed = make_server(lora_dirs=dirs, lora_cache_size="1").base_url
    runs = [bfl_image(mixed, x) for x in (ink, kohya, ink, both, kohya, None, ink)]
    assert runs[0] == runs[2] == runs[6] == alone_ink
    assert runs[1] == runs[4] == alone_kohya
    assert runs[3] not in (alone_ink, alone_kohya, runs[5])


def test_openai_generate_and_edit_take_loras(lora_server) -> None:  # type: ignore[no-untyped-def]
    url = lora_server.base_url
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    extra = {"seed": 7, "aspect_ratio": "1:1", "steps": 4, "output_format": "png"}
    plain = client.images.generate(model="flux-kontext-pro", prompt=PROMPT, extra_body=extra)
    inked = client.images.generate(
        model="flux-kontext-pro",
        prompt=PROMPT,
        extra_body={**extra, "loras": [{"name": "ink", "scale": 1.0}]},
    )
    plain_bytes = httpx.get(plain.data[0].url or "").content
    assert httpx.get(inked.data[0].url or "").content != plain_bytes
    # The same request by BFL gives the same image: the LoRA set is part of what a seed reproduces.
    assert httpx.get(inked.data[0].url or "").content == bfl_image(
        url, [{"name": "ink", "scale": 1.0}], output_format="png"
    )

    # Multipart edits carry the list as JSON text in a form field.
    edit_extra = {"seed": 7, "steps": 4, "response_format": "b64_json"}
    plain_edit = client.images.edit(
        model="flux-kontext-pro",
        image=("in.png", plain_bytes, "image/png"),
        prompt="make it green",
        extra_body=edit_extra,
    )
    inked_edit = client.images.edit(
        model="flux-kontext-pro",
        image=("in.png", plain_bytes, "image/png"),
        prompt="make it green",
        extra_body={**edit_extra, "loras": '[{"name": "ink", "scale": 1.0}]'},
    )
    assert base64.b64decode(plain_edit.data[0].b64_json or "") != base64.b64decode(
        inked_edit.data[0].b64_json or ""
    )


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "../ink",
        "/etc/passwd",
        "http://127.0.0.1/ink.safetensors",
        "ink.safetensors",
        "sub/ink",
        ".ink",
        "",
    ],
)
def test_unknown_or_path_like_names_are_refused(lora_server, name: str) -> None:  # type: ignore[no-untyped-def]
    url = lora_server.base_url
    r = httpx.post(f"{url}/v1/flux-kontext-pro", json={"prompt": PROMPT, "loras": [{"name": name}]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    text = str(detail)
    assert "GET /v1/loras" in text or "ink, kohya-style" in text
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError) as err:
        client.images.generate(
            model="flux-kontext-pro", prompt=PROMPT, extra_body={"loras": [{"name": name}]}
        )
    assert err.value.body["param"].startswith("loras[0]")  # type: ignore[index]


def test_unknown_name_lists_the_available_ones(lora_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        f"{lora_server.base_url}/v1/flux-kontext-pro", json={"prompt": PROMPT, "loras": [{"name": "nope"}]}
    )
    assert "unknown LoRA 'nope': this server has ink, kohya-style, wrong-model" in str(r.json()["detail"])


@pytest.mark.parametrize(
    "loras",
    [
        [{"name": "ink", "scale": 2.5}],
        [{"name": "ink"}, {"name": "ink"}],
        [{"name": "ink"}] * 5,
        [{"name": "ink", "path": "/tmp/x"}],
        "ink",
    ],
)
def test_bad_lora_lists_are_refused(lora_server, loras: Any) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{lora_server.base_url}/v1/flux-kontext-pro", json={"prompt": PROMPT, "loras": loras})
    assert r.status_code == 422, r.text
    r = httpx.post(f"{lora_server.base_url}/v1/images/generations", json={"prompt": PROMPT, "loras": loras})
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_an_adapter_for_another_model_fails_its_job_clearly(lora_server) -> None:  # type: ignore[no-untyped-def]
    url = lora_server.base_url
    r = httpx.post(
        f"{url}/v1/flux-kontext-pro", json={"prompt": PROMPT, "steps": 2, "loras": [{"name": "wrong-model"}]}
    )
    result = poll_result(url, r.json()["id"])
    assert result["status"] == "Error"
    assert "wrong-model" in str(result["details"]) and "another model" in str(result["details"])
    bfl_image(url)  # the model still serves


def test_no_lora_dirs_means_no_loras(server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{server.base_url}/v1/loras").json()["data"] == []
    r = httpx.post(
        f"{server.base_url}/v1/flux-kontext-pro", json={"prompt": PROMPT, "loras": [{"name": "ink"}]}
    )
    assert r.status_code == 422
    assert "this server has no LoRAs" in str(r.json()["detail"])
