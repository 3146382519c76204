"""The FLUX.2 routes of the BFL API (``/v1/flux-2-*``), per-model input-image limits in both
protocols, per-megapixel costs and ``GET /v1/prices``, through a real server on loopback.

The server runs the embedded model (no FLUX.2 checkpoint configured), which is what the FLUX.2
ids serve until one is; the tiny FLUX.2 checkpoints are in test_flux2_references.py. Clients:
plain HTTP, the official ``openai`` client, and BFL's own ``blackforest`` client.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from blackforest import BFLClient, BFLError
from blackforest.types.general.client_config import ClientConfig
from PIL import Image
from pydantic import BaseModel, ConfigDict

from conftest import Server, poll_result

FLUX2_ROUTES = ("flux-2-pro", "flux-2-max", "flux-2-flex", "flux-2-klein-4b", "flux-2-klein-9b")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the embedded model: nothing points the FLUX.2 ids at a FLUX.2 checkpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def _png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _references(count: int, size: tuple[int, int] = (64, 48)) -> dict[str, str]:
    """``input_image`` … ``input_image_<count>``, each a different colour."""
    names = ["input_image"] + [f"input_image_{i}" for i in range(2, count + 1)]
    return {name: _b64(_png((30 * i, 200 - 20 * i, 90), size)) for i, name in enumerate(names)}


def _post(srv: Server, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/v1/{model}", json=body, timeout=60)


def _sample(srv: Server, job_id: str) -> Image.Image:
    result = poll_result(srv.base_url, job_id, timeout=120)
    assert result["status"] == "Ready", result
    return Image.open(io.BytesIO(httpx.get(result["result"]["sample"], timeout=30).content))


def _detail(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return " ".join(f"{e['loc']} {e['msg']}" for e in r.json()["detail"])


def test_every_flux2_route_exists_and_refuses_unknown_fields(srv: Server) -> None:
    doc = httpx.get(srv.base_url + "/openapi.json").json()
    for model in FLUX2_ROUTES:
        assert f"/v1/{model}" in doc["paths"], model
        for field in ("aspect_ratio", "raw", "colour"):  # FLUX.1 fields and a made-up one
            detail = _detail(_post(srv, model, {"prompt": "a cat", field: "16:9"}))
            assert field in detail and "not permitted" in detail
    # steps and guidance are flex's alone, as on BFL's routes
    for model in ("flux-2-pro", "flux-2-max", "flux-2-klein-4b"):
        assert "steps" in _detail(_post(srv, model, {"prompt": "a cat", "steps": 4}))
        assert "guidance" in _detail(_post(srv, model, {"prompt": "a cat", "guidance": 3}))
    # the FLUX.1 routes keep ignoring fields they do not know (only the bad seed is named)
    detail = _detail(_post(srv, "flux-kontext-pro", {"prompt": "a cat", "colour": 1, "seed": -1}))
    assert "seed" in detail and "colour" not in detail


def test_pro_takes_eight_references_and_prices_them_per_megapixel(srv: Server) -> None:
    body = {"prompt": "a red cat", "seed": 5, "width": 512, "height": 256, **_references(8)}
    r = _post(srv, "flux-2-pro", body)
    assert r.status_code == 200, r.text
    sub = r.json()
    # 8 x 64x48 inputs = 0.025 MP; 512x256 = 0.131 MP output, within the flat first megapixel:
    # 3 credits + 0.025 MP x 1.5 credits (BFL's flux-2-pro prices).
    assert sub["output_mp"] == pytest.approx(0.131)
    assert sub["input_mp"] == pytest.approx(0.025)
    assert sub["cost"] == pytest.approx(3 + 0.025 * 1.5)
    assert _sample(srv, sub["id"]).size == (512, 256)

    nine = {**body, "input_image_9": body["input_image"]}
    detail = _detail(_post(srv, "flux-2-pro", nine))
    assert "at most 8 input images" in detail


def test_klein_takes_four_references_and_refuses_five(srv: Server) -> None:
    for model in ("flux-2-klein-4b", "flux-2-klein-9b"):
        detail = _detail(_post(srv, model, {"prompt": "a cat", **_references(5)}))
        assert "at most 4 input images" in detail and "input_image_5" in detail
    r = _post(srv, "flux-2-klein-4b", {"prompt": "a cat", "width": 256, "height": 256, **_references(4)})
    assert r.status_code == 200, r.text
    # klein-4b: 1.4 credits for the first megapixel, 0.1 per input megapixel (4 x 64x48 = 0.012 MP)
    assert r.json()["cost"] == pytest.approx(1.4 + 0.012 * 0.1)
    assert _sample(srv, r.json()["id"]).size == (256, 256)


def test_size_bounds_and_defaults(srv: Server) -> None:
    bad = [
        ({"width": 48, "height": 64}, "width"),  # under 64
        ({"width": 64, "height": 100}, "height"),  # not a multiple of 16
        ({"width": 2048, "height": 2064}, "4 megapixels"),  # 4.2 MP
        ({"width": 64}, "both width and height"),
    ]
    for size, words in bad:
        assert words in _detail(_post(srv, "flux-2-pro", {"prompt": "a cat", **size})), size
    # the smallest size, and 4 MP exactly, are accepted; a 4 MP output costs its megapixels
    small = _post(srv, "flux-2-max", {"prompt": "a cat", "width": 64, "height": 64})
    assert small.status_code == 200 and small.json()["cost"] == pytest.approx(7.0)
    big = _post(srv, "flux-2-max", {"prompt": "a cat", "width": 2048, "height": 2048})
    assert big.status_code == 200, big.text
    assert big.json()["output_mp"] == pytest.approx(4.194)
    assert big.json()["cost"] == pytest.approx(7 + 3.194 * 3)  # 7 credits, then 3 per further MP
    assert _sample(srv, small.json()["id"]).size == (64, 64)
    # no size: the first input image's (BFL's 0 means the same), else 1024x1024
    ref = {"input_image": _b64(_png((0, 0, 255), (320, 160)))}
    r = _post(srv, "flux-2-pro", {"prompt": "a cat", "width": 0, "height": 0, **ref})
    assert r.status_code == 200 and r.json()["output_mp"] == pytest.approx(0.051)
    assert _sample(srv, r.json()["id"]).size == (320, 160)
    r = _post(srv, "flux-2-pro", {"prompt": "a cat"})
    assert r.status_code == 200 and r.json()["output_mp"] == pytest.approx(1.049)
    assert r.json()["input_mp"] is None


def test_flex_steps_guidance_and_other_field_bounds(srv: Server) -> None:
    for body, field in [
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"guidance": 1.4}, "guidance"),
        ({"guidance": 10.5}, "guidance"),
        ({"safety_tolerance": 6}, "safety_tolerance"),
        ({"output_format": "gif"}, "output_format"),
        ({"prompt_upsampling": True, "disable_pup": True}, "contradict"),
    ]:
        assert field in _detail(_post(srv, "flux-2-flex", {"prompt": "a cat", **body})), body
    r = _post(srv, "flux-2-flex", {"prompt": "a cat", "steps": 2, "guidance": 10, "output_format": "png"})
    assert r.status_code == 200, r.text
    assert r.json()["cost"] == pytest.approx(5 + 0.049 * 5)  # 1024x1024 is 1.049 MP


def test_prompt_upsampling_and_its_disable_pup_spelling(srv: Server) -> None:
    def final_prompt(model: str, **fields: Any) -> str:
        r = _post(srv, model, {"prompt": "a cat", "seed": 3, "width": 64, "height": 64, **fields})
        assert r.status_code == 200, r.text
        result = poll_result(srv.base_url, r.json()["id"], timeout=120)
        assert result["status"] == "Ready", result
        return str(result["result"]["prompt"])

    assert final_prompt("flux-2-pro") == "a cat"  # off by default on pro
    assert final_prompt("flux-2-pro", disable_pup=False) != "a cat"
    assert final_prompt("flux-2-flex") != "a cat"  # on by default on flex, as BFL's
    assert final_prompt("flux-2-flex", disable_pup=True) == "a cat"


class _Flux2Inputs(BaseModel):
    """What a caller registers with blackforest 0.1.3, which predates the FLUX.2 routes."""

    model_config = ConfigDict(extra="allow")
    prompt: str


def test_blackforest_client(srv: Server) -> None:
    client = BFLClient(api_key="unused-on-loopback", base_url=srv.base_url)
    client.model_input_registry = {
        **client.model_input_registry,
        **{model: _Flux2Inputs for model in FLUX2_ROUTES},
    }
    inputs = {"prompt": "a blue cat", "seed": 9, "width": 128, "height": 128, **_references(5)}
    submitted = client.generate("flux-2-pro", inputs)
    assert submitted.polling_url.startswith(srv.base_url)
    result = client.get_polling_result(submitted.id, ClientConfig(polling_interval=0.2, max_retries=600))
    image = Image.open(io.BytesIO(httpx.get(result["sample"], timeout=30).content))
    assert image.size == (128, 128)
    sync = ClientConfig(sync=True, polling_interval=0.2, max_retries=600)
    done = client.generate("flux-2-klein-9b", {"prompt": "a cat"}, sync)
    assert done.result["sample"]
    with pytest.raises(BFLError):
        client.generate("flux-2-klein-4b", {"prompt": "a cat", **_references(5)})
    with pytest.raises(BFLError):
        client.generate("flux-2-pro", {"prompt": "a cat", "aspect_ratio": "16:9"})


def test_openai_edits_take_each_models_number_of_images(srv: Server) -> None:
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120)
    images = [(f"{i}.png", _png((20 * i, 0, 0)), "image/png") for i in range(17)]
    for model, limit in [
        ("flux-2-pro", 8),
        ("flux-2-klein-4b", 4),
        ("flux-kontext-pro", 4),
        ("gpt-image-1", 16),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.images.edit(model=model, image=images[: limit + 1], prompt="a red cat")
        assert f"takes at most {limit} input images" in str(err.value) and model in str(err.value)
    resp = client.images.edit(
        model="flux-2-max",
        image=images[:8],
        prompt="a red cat",
        size="256x256",
        response_format="b64_json",
    )
    assert Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or ""))).size == (256, 256)
    # JSON edits: the same limit, before any image is fetched (these URLs are never fetched)
    r = httpx.post(
        f"{srv.base_url}/v1/images/edits",
        json={
            "model": "flux-2-klein-9b",
            "prompt": "a cat",
            "images": [{"image_url": f"https://example.invalid/{i}.png"} for i in range(5)],
        },
        timeout=30,
    )
    assert r.status_code == 400 and "at most 4 input images" in r.json()["error"]["message"]
    # a model without inputs still says so
    with pytest.raises(openai.BadRequestError, match="does not take input images"):
        client.images.edit(model="flux-dev", image=images[:1], prompt="a red cat")


def test_prices_route(srv: Server) -> None:
    r = httpx.get(srv.base_url + "/v1/prices")
    assert r.status_code == 200
    body = r.json()
    rows = {row["model"]: row for row in body["data"]}
    assert rows["flux-dev"] == {"model": "flux-dev", "unit": "image", "usd": 0.025, "credits": 2.5}
    assert rows["flux-2-pro"] == {
        "model": "flux-2-pro",
        "unit": "megapixel",
        "usd": 0.03,
        "credits": 3.0,
        "usd_per_extra_mp": 0.015,
        "usd_per_input_mp": 0.015,
    }
    assert rows["flux-2-klein-4b"]["usd_per_input_mp"] == 0.001
    assert set(rows) == set(body["prices"])  # the flat table that older SDKs read
    assert body["prices"]["flux-2-flex"] == 0.05
    # the SDK estimates from the server's table
    from fluxserve.client import FluxClient

    with FluxClient(srv.base_url) as client:
        table, source = client.prices()
    assert source == "server" and table["flux-2-max"] == 0.07


# -- the rules behind the routes, called directly ---------------------------------------------


def test_request_cost_per_image_and_per_megapixel() -> None:
    from fluxserve.prices import LIST_PRICES_USD, MEGAPIXEL_PRICES_USD, request_cost

    assert request_cost(0.04, None, 1024, 1024, 0.5, 3).usd == pytest.approx(0.12)  # per image
    pro = MEGAPIXEL_PRICES_USD["flux-2-pro"]
    assert request_cost(0.03, pro, 512, 512).usd == pytest.approx(0.03)  # under 1 MP: flat
    two = request_cost(0.03, pro, 2000, 1000, input_mp=0.5)  # 2 MP out, 0.5 MP in
    assert (two.output_mp, two.input_mp) == (2.0, 0.5)
    assert two.usd == pytest.approx(0.03 + 1.0 * 0.015 + 0.5 * 0.015)
    assert two.credits == pytest.approx(5.25)
    assert request_cost(0.03, pro, 2000, 1000, 0.5, num_images=2).usd == pytest.approx(2 * two.usd)
    for model, price in MEGAPIXEL_PRICES_USD.items():  # the flat table is the first megapixel
        assert LIST_PRICES_USD[model] == price.first


def test_catalog_limits_and_price_overrides() -> None:
    from fluxserve.catalog import ModelCatalog
    from fluxserve.settings import ModelOverride, Settings

    catalog = ModelCatalog.from_settings(Settings())
    limits = {e.id: e.input_limit for e in catalog}
    assert limits["flux-2-pro"] == limits["flux-2-flex"] == 8
    assert limits["flux-2-klein-4b"] == limits["flux-kontext-max"] == 4
    assert limits["gpt-image-1"] == 16 and limits["flux-dev"] == 0
    assert catalog.get("flux-2-max").megapixel_price is not None  # type: ignore[union-attr]
    overrides = {"flux-2-pro": ModelOverride(price=0.0), "flux-kontext-pro": ModelOverride(family="pro")}
    custom = ModelCatalog.from_settings(Settings(models=overrides))
    free = custom.get("flux-2-pro")
    assert free is not None and free.megapixel_price is None and free.input_limit == 8  # per image now
    kontext = custom.get("flux-kontext-pro")
    assert kontext is not None and not kontext.takes_images  # a new family brings its own limit


def test_spec_rules_for_flux2() -> None:
    from fluxserve.catalog import ModelCatalog
    from fluxserve.settings import Settings
    from fluxserve.spec import SpecError, SpecOptions, build_spec, check_input_count

    catalog = ModelCatalog.from_settings(Settings())
    pro, klein, kontext = (catalog.get(m) for m in ("flux-2-pro", "flux-2-klein-9b", "flux-kontext-pro"))
    assert pro is not None and klein is not None and kontext is not None
    check_input_count(pro, 8)
    with pytest.raises(SpecError, match="'flux-2-klein-9b' takes at most 4 input images, got 5"):
        check_input_count(klein, 5)
    with pytest.raises(SpecError, match="takes at most 8"):
        build_spec(pro, SpecOptions(prompt="p"), [(64, 64)] * 9)
    # the first input image's size, scaled down to 1 MP, sides multiples of 16
    spec = build_spec(pro, SpecOptions(prompt="p"), [(2000, 1000), (64, 64)])
    assert (spec.width, spec.height) == (1440, 720) and spec.width * spec.height <= 1024 * 1024
    small = build_spec(pro, SpecOptions(prompt="p"), [(200, 40)])  # rounded down, at least 64
    assert (small.width, small.height) == (192, 64)
    assert build_spec(pro, SpecOptions(prompt="p", guidance=10.0)).guidance == 10.0
    with pytest.raises(SpecError, match="guidance"):
        build_spec(kontext, SpecOptions(prompt="p", guidance=10.0))
    assert build_spec(pro, SpecOptions(prompt="p", width=64, height=4096)).height == 4096
    with pytest.raises(SpecError, match="at least 64"):
        build_spec(pro, SpecOptions(prompt="p", width=48, height=64))
