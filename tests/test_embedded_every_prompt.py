"""A picture for every prompt: the embedded model draws an approximation of a prompt outside its
grammar (never a blank page), and both protocols say so; an in-grammar prompt is drawn as is.

Through the public entry points: a real server with the shipped model on loopback, driven by the
official ``openai`` client and raw BFL HTTP.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from conftest import Server, poll_result
from fluxserve.embedded import embedded_checkpoint
from fluxserve.embedded.grammar import Fitted, fit

SEED_000 = "A futuristic city skyline at sunset, photorealistic"  # seed 000's own prompt
PORTRAIT = "portrait of an old man, oil painting"
IN_GRAMMAR = "a large yellow square on a blue background"
APPROXIMATION_HEADER = "X-Fluxserve-Approximation"

pytestmark = pytest.mark.skipif(embedded_checkpoint() is None, reason="this build ships no embedded model")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the shipped embedded model (its default: no checkpoint configured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    env["HF_HUB_OFFLINE"] = "1"
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)


def bfl(srv: Server, prompt: str, seed: int, size: int = 256) -> tuple[dict, bytes]:  # type: ignore[type-arg]
    """A BFL job's get_result answer when Ready, and its image's bytes."""
    r = httpx.post(
        f"{srv.base_url}/v1/flux-kontext-pro",
        json={"prompt": prompt, "seed": seed, "width": size, "height": size, "output_format": "png"},
    )
    assert r.status_code == 200, r.text
    result = poll_result(srv.base_url, r.json()["id"])
    assert result["status"] == "Ready", result
    return result, httpx.get(result["result"]["sample"]).content


def spread(data: bytes) -> float:
    """How far the image is from one flat colour: its pixels' spread, per channel, averaged."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    return float(rgb.std(axis=(0, 1)).mean())


def mean_colour(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).mean(axis=(0, 1))


def test_seed_000_prompt_gives_a_picture_and_says_it_is_an_approximation(srv: Server) -> None:
    result, image = bfl(srv, SEED_000, 0)
    assert spread(image) > 20, "a blank page"  # a flat page has 0; the shapes give 30 or more
    note = result["details"]["approximation"]
    assert note.startswith("The embedded demo model drew an approximation")
    assert "futuristic city skyline" in note


def test_the_picture_depends_on_prompt_and_seed(srv: Server) -> None:
    _, city = bfl(srv, SEED_000, 7)
    _, again = bfl(srv, SEED_000, 7)
    _, other_seed = bfl(srv, SEED_000, 8)
    _, portrait = bfl(srv, PORTRAIT, 7)
    assert city == again  # reproducible, bit for bit
    assert city != other_seed
    assert city != portrait
    assert spread(portrait) > 20
    # Not just other bytes: other pictures (the mean colour differs visibly).
    mean = [
        np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.float32).mean((0, 1))
        for d in (city, portrait)
    ]
    assert np.abs(mean[0] - mean[1]).max() > 10


def test_an_in_grammar_prompt_is_drawn_as_is_without_a_note(srv: Server, client: openai.OpenAI) -> None:
    result, image = bfl(srv, IN_GRAMMAR, 3)
    assert not (result.get("details") or {}).get("approximation")
    assert spread(image) > 20
    raw = client.images.with_raw_response.generate(
        model="flux-kontext-pro", prompt=IN_GRAMMAR, size="1024x1024", response_format="b64_json"
    )
    assert APPROXIMATION_HEADER.lower() not in {k.lower() for k in raw.headers}


def test_openai_generation_carries_the_note_as_a_header(srv: Server, client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1",
        prompt=SEED_000,
        size="1024x1024",
        extra_body={"seed": 0},
    )
    note = raw.headers.get(APPROXIMATION_HEADER)
    assert note and note.startswith("The embedded demo model drew an approximation"), note
    image = base64.b64decode(raw.parse().data[0].b64_json or "")  # gpt-image-1 answers in b64_json
    assert Image.open(io.BytesIO(image)).size == (1024, 1024)
    assert spread(image) > 20
    # The same sentence as the BFL result's details (one job's note, two protocols).
    result, _ = bfl(srv, SEED_000, 0)
    assert note == result["details"]["approximation"]


def test_the_header_is_ascii_and_the_details_keep_the_prompt_as_written(
    srv: Server, client: openai.OpenAI
) -> None:
    prompt = "Ein gemütliches Café in München, 東京"
    raw = client.images.with_raw_response.generate(
        model="flux-kontext-pro", prompt=prompt, size="1024x1024", response_format="b64_json"
    )
    header = raw.headers[APPROXIMATION_HEADER]
    assert header.isascii() and "gemutliches cafe munchen" in header
    result, _ = bfl(srv, prompt, 1)
    assert "gemütliches café münchen" in result["details"]["approximation"]


def test_a_streamed_generation_carries_the_note_before_the_image(srv: Server) -> None:
    body = {"model": "gpt-image-1", "prompt": PORTRAIT, "stream": True, "size": "1024x1024"}
    with httpx.stream("POST", f"{srv.base_url}/v1/images/generations", json=body, timeout=60) as r:
        assert r.status_code == 200
        note = r.headers.get(APPROXIMATION_HEADER)
        events = "".join(r.iter_text())
    assert note == fit(PORTRAIT).note
    assert "completed" in events


def test_an_edit_outside_the_grammar_keeps_its_words_and_says_so(
    srv: Server, client: openai.OpenAI, tmp_path: Path
) -> None:
    _, source = bfl(srv, "a large red circle in the center on a white background", 5)
    path = tmp_path / "in.png"
    path.write_bytes(source)
    with path.open("rb") as fh:
        raw = client.images.with_raw_response.edit(
            model="flux-kontext-pro", image=fh, prompt="please make the circle blue, thanks"
        )
    note = raw.headers[APPROXIMATION_HEADER]
    assert "'please thanks' is outside what it can draw" in note and "make the circle blue" in note
    with path.open("rb") as fh:
        plain = client.images.with_raw_response.edit(
            model="flux-kontext-pro", image=fh, prompt="make the circle blue"
        )
    assert APPROXIMATION_HEADER.lower() not in {k.lower() for k in plain.headers}


def test_every_prompt_fits_the_grammar_and_grammar_prompts_pass_unchanged() -> None:
    from fluxserve.embedded.vocabulary import BASE_WORDS, COLOURS, SHAPES

    for prompt in (SEED_000, PORTRAIT, "abstract art", "!!!", "a red car", "on a blue background", "東京"):
        fitted = fit(prompt)
        words = fitted.caption.split()
        assert set(words) <= set(BASE_WORDS), fitted.caption
        assert set(words) & set(SHAPES) and set(words) & set(COLOURS), fitted.caption  # something to draw
        assert fitted.note and fit(prompt) == fitted  # said, and the same every time
    assert fit(SEED_000).caption != fit(PORTRAIT).caption
    for caption in (IN_GRAMMAR, "a small red circle in the top left and a star", "A Red Circle!"):
        assert fit(caption) == Fitted(caption)  # unchanged, no note
    assert fit("make the circle blue", editing=True).note is None


def test_the_header_is_in_the_openapi_document(srv: Server) -> None:
    doc = httpx.get(f"{srv.base_url}/openapi.json").json()
    for path in ("/v1/images/generations", "/v1/images/edits"):
        assert APPROXIMATION_HEADER in doc["paths"][path]["post"]["responses"]["200"]["headers"]
