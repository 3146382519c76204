"""OpenAI's GPT-image behaviour, through the official ``openai`` client (sync, async, streaming):
base64 answers by default, the echoed settings and ``usage``, edit-stream event names,
``input_fidelity`` and transparent backgrounds, and clear 400s where a model cannot."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from fluxserve.api.openai_render import quality_steps, transparent


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0)


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _image_tokens(width: int, height: int) -> int:
    return (width // 16) * (height // 16)  # one FLUX latent token per 16x16 pixels


def _input_tokens(*sizes: tuple[int, int]) -> int:
    # The documented rule: the job's input megapixels (BFL's input_mp, 3 decimals) / 256 px.
    return round(round(sum(w * h for w, h in sizes) / 1e6, 3) * 1e6 / 256)


def test_gpt_image_names_answer_base64_and_echo_their_settings(client: openai.OpenAI) -> None:
    for model in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"):
        resp = client.images.generate(model=model, prompt="a red circle", size="256x256", quality="low")
        assert resp.data and resp.data[0].b64_json and resp.data[0].url is None, model
        image = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json)))
        assert image.format == "PNG" and image.size == (256, 256)
        assert (resp.background, resp.output_format, resp.quality, resp.size) == (
            "opaque",
            "png",
            "low",
            "256x256",
        )
        usage = resp.usage
        assert usage is not None
        assert usage.input_tokens_details.text_tokens == 3 and usage.input_tokens_details.image_tokens == 0
        assert usage.input_tokens == 3 and usage.output_tokens == _image_tokens(256, 256)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # FLUX names keep URLs, as the resellers answer; both echo the same fields.
    flux = client.images.generate(model="flux-kontext-pro", prompt="a blue square", size="256x256", n=2)
    assert flux.data[0].url and flux.data[0].b64_json is None
    assert (flux.background, flux.quality, flux.output_format) == ("opaque", "high", "png")
    assert flux.usage and flux.usage.output_tokens == 2 * _image_tokens(256, 256)
    # An explicit response_format wins (a superset of OpenAI, which has only base64 here).
    url = client.images.generate(model="gpt-image-1", prompt="a star", size="256x256", response_format="url")
    assert url.data[0].url and httpx.get(url.data[0].url).status_code == 200


def test_quality_sets_the_steps_when_none_are_given() -> None:
    assert quality_steps("low", 28) == 14 and quality_steps("medium", 28) == 21
    assert quality_steps("high", 28) is None and quality_steps("auto", 28) is None
    assert quality_steps(None, 28) is None and quality_steps("low", 2) == 1


def test_async_edit_with_input_fidelity(server) -> None:  # type: ignore[no-untyped-def]
    big = _png((200, 30, 30), (1600, 1000))  # 1.6 MP

    async def edit(fidelity: str | None, model: str = "gpt-image-1.5") -> openai.types.ImagesResponse:
        base_url = server.base_url + "/v1"
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as aclient:
            kwargs = {"input_fidelity": fidelity} if fidelity else {}
            return await aclient.images.edit(
                model=model,
                image=[("a.png", big, "image/png"), ("b.png", _png((0, 0, 200), (320, 320)), "image/png")],
                prompt="make the background blue",
                size="256x256",
                quality="low",
                **kwargs,  # type: ignore[arg-type]
            )

    async def all_three() -> list[openai.types.ImagesResponse]:
        return list(await asyncio.gather(edit("high"), edit("low"), edit(None)))

    high, low, default = asyncio.run(all_three())
    small = _input_tokens((320, 320))
    for resp in (high, low, default):
        assert resp.data[0].b64_json and resp.usage and resp.output_format == "png"
        assert resp.usage.input_tokens_details.text_tokens == 4
    # high keeps the 1.6 MP input; low (OpenAI's default) scales it to at most 1 MP first.
    high_tokens = high.usage.input_tokens_details.image_tokens  # type: ignore[union-attr]
    assert high_tokens == _input_tokens((1600, 1000), (320, 320))
    low_tokens = low.usage.input_tokens_details.image_tokens  # type: ignore[union-attr]
    assert small < low_tokens <= 1024 * 1024 // 256 + small + 16
    assert default.usage.input_tokens_details.image_tokens == low_tokens  # type: ignore[union-attr]


def test_edit_stream_uses_image_edit_events(client: openai.OpenAI) -> None:
    stream = client.images.edit(
        model="gpt-image-1",
        image=("in.png", _png((240, 240, 240), (256, 256)), "image/png"),
        prompt="add a red circle",
        size="256x256",
        stream=True,
        partial_images=1,
        quality="medium",
        input_fidelity="high",
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[-1] == "image_edit.completed" and set(types) <= {
        "image_edit.partial_image",
        "image_edit.completed",
    }
    done = events[-1]
    assert done.quality == "medium" and done.background == "opaque" and done.output_format == "png"
    assert done.size == "256x256"
    assert done.usage.input_tokens_details.image_tokens == _input_tokens((256, 256))  # type: ignore[union-attr]
    assert base64.b64decode(done.b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
    gen = list(
        client.images.generate(model="gpt-image-1", prompt="a red circle", size="256x256", stream=True)
    )
    assert gen[-1].type == "image_generation.completed"
    assert gen[-1].usage.output_tokens == _image_tokens(256, 256)  # type: ignore[union-attr]


def test_transparent_background_png_and_webp(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="gpt-image-1",
        prompt="a red circle",
        size="256x256",
        background="transparent",
        extra_body={"seed": 5},
    )
    assert resp.background == "transparent"
    img = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json or "")))
    assert img.format == "PNG" and img.mode == "RGBA"
    alpha = img.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((255, 255)) == 0  # the plain background
    assert alpha.getextrema() == (0, 255)  # and an opaque subject
    # By URL (a FLUX name), in webp: the keyed file is stored beside the result.
    resp = client.images.generate(
        model="flux-kontext-pro",
        prompt="a red circle",
        size="256x256",
        background="transparent",
        output_format="webp",
        extra_body={"seed": 5},
    )
    data = httpx.get(resp.data[0].url or "").content
    img = Image.open(io.BytesIO(data))
    assert img.format == "WEBP" and img.mode == "RGBA" and img.getchannel("A").getpixel((0, 0)) == 0


def test_keying_keeps_the_subject_and_its_inner_background_colour() -> None:
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    for x in range(16, 48):
        for y in range(16, 48):
            ring = not (24 <= x < 40 and 24 <= y < 40)
            img.putpixel((x, y), (200, 0, 0) if ring else (255, 255, 255))  # white inside red
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = Image.open(io.BytesIO(transparent(buf.getvalue(), "png", None, png_level=1)))
    alpha = out.getchannel("A")
    assert alpha.getpixel((2, 2)) == 0 and alpha.getpixel((20, 20)) == 255
    assert alpha.getpixel((32, 32)) == 255  # enclosed white is not the background


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"}, "output_format"),
        ({"model": "dall-e-3", "background": "transparent"}, "background"),
        ({"model": "gpt-image-1", "extra_body": {"input_fidelity": "high"}}, "input_fidelity"),
        ({"model": "gpt-image-1", "quality": "ultra"}, "quality"),
    ],
)
def test_what_a_model_cannot_do_is_a_clear_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="a red circle", size="256x256", **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["message"]  # type: ignore[index]


def test_input_fidelity_on_a_model_without_it_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            model="gpt-image-1-mini",
            image=("in.png", _png((9, 9, 9), (64, 64)), "image/png"),
            prompt="x",
            input_fidelity="high",
        )
    assert err.value.body["param"] == "input_fidelity"  # type: ignore[index]
    assert "gpt-image-1-mini" in err.value.body["message"]  # type: ignore[index]
