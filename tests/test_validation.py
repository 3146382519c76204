"""Bad request bodies are a clear 4xx in the protocol's own shape, never a 500: the JSON's shape
and nesting, sizes, aspect ratios and seeds, lone surrogates, and idempotent retries of them.

BFL routes answer ``422 {"detail": [{"loc", "msg", "type"}]}`` (and other errors as
``{"detail": ...}``); OpenAI routes answer ``400 {"error": {"message", "type", "param", "code"}}``
(``assert_bfl_422`` and ``assert_openai_400``, used by test_validation_urls.py too, which covers
URLs and headers). Each case here was reported as a 500 (or as accepted when it should not be);
all are sent to a real server on loopback, and none makes the server resolve a name or fetch a URL.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import Server, poll_result

BFL_MODELS = [
    "flux-kontext-pro",
    "flux-kontext-max",
    "flux-pro-1.1",
    "flux-pro",
    "flux-dev",
    "flux-pro-1.1-ultra",
]
JSON_ROUTES = [f"/v1/{m}" for m in BFL_MODELS] + ["/v1/images/generations", "/v1/images/edits"]
SURROGATE = "\\ud800"  # as JSON text: a lone surrogate, which no UTF-8 text can hold


def _with_surrogate(body: dict[str, Any]) -> str:
    """``body`` as JSON text with each "<S>" replaced by a lone surrogate escape."""
    return json.dumps(body).replace("<S>", SURROGATE)


def _png(size: tuple[int, int] = (64, 64), noise: bool = False) -> bytes:
    out = io.BytesIO()
    img = Image.effect_noise(size, 60).convert("RGB") if noise else Image.new("RGB", size, (200, 40, 40))
    img.save(out, format="PNG")
    return out.getvalue()


DATA_URL = "data:image/png;base64," + base64.b64encode(_png()).decode()


def _post(server: Server, path: str, content: str | bytes, headers: dict[str, str] | None = None) -> Any:
    return httpx.post(
        server.base_url + path,
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
    )


def _is_openai(path: str) -> bool:
    return path.startswith("/v1/images/")


def assert_bfl_422(r: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """A BFL validation error: 422 with FastAPI's detail list, naming ``field`` if given."""
    assert r.status_code == 422, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail and set(detail[0]) >= {"loc", "msg", "type"}, detail
    assert detail[0]["msg"], detail
    if field is not None:
        assert detail[0]["loc"][-1] == field, detail
    return detail[0]  # type: ignore[no-any-return]


def assert_openai_400(r: httpx.Response, param: str | None = None) -> dict[str, Any]:
    """An OpenAI invalid-request error: 400 ``{"error": {...}}`` whose param starts with ``param``."""
    assert r.status_code == 400, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"], err
    if param is not None:
        assert (err["param"] or "").startswith(param), err
    return err  # type: ignore[no-any-return]


def assert_refused(r: httpx.Response, path: str, field: str | None = None) -> str:
    """The protocol's own refusal for ``path``; returns the message."""
    if _is_openai(path):
        return str(assert_openai_400(r, field)["message"])
    return str(assert_bfl_422(r, field)["msg"])


# -- JSON edits: "images" that is not a list of {"image_url": ...} objects ----------------------


@pytest.mark.parametrize(
    "images",
    [
        "x",
        5,
        1.5,
        True,
        {"image_url": DATA_URL},
        [1, 2],
        [DATA_URL],
        [[]],
        [{"image_url": 5}],
        [{"file_id": "f"}],
    ]
    + [[], None],
    ids=lambda v: type(v).__name__ + ":" + repr(v)[:12],
)
def test_json_edit_images_must_be_a_list_of_image_url_objects(server: Server, images: Any) -> None:
    r = httpx.post(server.base_url + "/v1/images/edits", json={"prompt": "x", "images": images}, timeout=30)
    err = assert_openai_400(r, "images")
    assert "image_url" in err["message"] or "images" in err["message"]


# -- deeply nested JSON -----------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_deeply_nested_json_is_a_4xx_on_every_json_route(server: Server, path: str) -> None:
    deep = "[" * 100_000
    bodies = [
        deep,  # unclosed
        '{"prompt": "x", "images": [], "extra": ' + deep + "}",
        "[" * 5_000 + "]" * 5_000,  # well-formed, but deeper than any JSON parser here allows
    ]
    for body in bodies:
        for headers in ({}, {"Idempotency-Key": "deep-" + path}):
            message = assert_refused(_post(server, path, body, headers), path)
            assert "nested too deeply" in message


def test_nested_unknown_fields_never_reach_the_idempotency_digest(server: Server) -> None:
    """Nesting just below the parser's limit once got through parsing and then overflowed the
    idempotency digest (a 500): unknown fields are now left out of it, so each retry below is
    the same request as the first and answers the same job."""
    png = _png()
    key = {"Idempotency-Key": "nested-edit-1"}
    options = {"prompt": "a red square", "steps": 1, "size": "256x256"}
    first = httpx.post(
        server.base_url + "/v1/images/edits",
        json={**options, "images": [{"image_url": DATA_URL}]},
        headers=key,
        timeout=60,
    )
    assert first.status_code == 200, first.text
    job_path = first.json()["data"][0]["url"].split("?")[0]
    answers: set[int] = set()
    for depth in range(850, 1_000, 6):
        nested = "[" * depth + "]" * depth
        as_json = _post(
            server,
            "/v1/images/edits",
            json.dumps({**options, "images": [{"image_url": DATA_URL}]})[:-1]
            + ', "unknown": '
            + nested
            + "}",
            key,
        )
        as_form = httpx.post(
            server.base_url + "/v1/images/edits",
            data={**{k: str(v) for k, v in options.items()}, "extra_body": '{"unknown": ' + nested + "}"},
            files={"image": ("a.png", png, "image/png")},
            headers=key,
            timeout=60,
        )
        for r in (as_json, as_form):
            answers.add(r.status_code)
            if r.status_code == 200:
                assert r.json()["data"][0]["url"].split("?")[0] == job_path
            else:
                assert "nested too deeply" in assert_openai_400(r)["message"]
    assert 200 in answers  # the sweep reached parsable depths, not only refusals


@pytest.mark.parametrize(
    "path,body,message",
    [
        ("/v1/flux-kontext-pro", b'{"prompt": "\xff"}', "UTF-8"),
        ("/v1/images/generations", b'{"prompt": "\xff"}', "UTF-8"),
        ("/v1/flux-pro-1.1", b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "4300 digits"),
        ("/v1/images/generations", b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", "4300 digits"),
    ],
)
def test_unparsable_json_bodies_say_why(server: Server, path: str, body: bytes, message: str) -> None:
    r = _post(server, path, body)
    assert message in assert_refused(r, path)


def test_multipart_extra_body_must_be_a_json_object(server: Server) -> None:
    for extra in ("[1]", '"text"', "7", "{not json"):
        r = httpx.post(
            server.base_url + "/v1/images/edits",
            data={"prompt": "x", "extra_body": extra},
            files={"image": ("a.png", _png(), "image/png")},
            timeout=30,
        )
        assert_openai_400(r, "extra_body")


# -- size, aspect_ratio, seed -----------------------------------------------------------------

BAD_SIZES = [
    "１０２４x１０２４",  # fullwidth digits: int() reads them, the rule is ASCII digits
    "²x²",  # superscripts: str.isdigit() is true, int() fails
    "١٠٢٤x١٠٢٤",  # Arabic-Indic digits
    "1024x１０２４",
    "99999999999x1",
    "9" * 31 + "x",
    "1" * 5000 + "x1024",
    "1024x1024x1024",
    "-1024x1024",
    "x",
]


@pytest.mark.parametrize("size", BAD_SIZES, ids=range(len(BAD_SIZES)))
def test_openai_size_with_non_ascii_digits_or_huge_numbers_is_400(server: Server, size: str) -> None:
    r = httpx.post(server.base_url + "/v1/images/generations", json={"prompt": "x", "size": size}, timeout=30)
    assert_openai_400(r, "size")
    r = httpx.post(
        server.base_url + "/v1/images/edits",
        json={"prompt": "x", "size": size, "images": [{"image_url": DATA_URL}]},
        timeout=30,
    )
    assert_openai_400(r, "size")


BAD_RATIOS = [
    "9999999999999999999999:1",
    "1" * 5000 + ":1",
    "１６:９",
    "²:¹",
    "١٦:٩",
    "16:９",
    "99999:1",
    "1:99999",
    "0:1",
    "16:9:1",
    "-16:9",
    "16/9",
]


@pytest.mark.parametrize("ratio", BAD_RATIOS, ids=range(len(BAD_RATIOS)))
def test_aspect_ratio_with_huge_or_non_ascii_numbers_is_refused(server: Server, ratio: str) -> None:
    for model in ("flux-kontext-pro", "flux-pro-1.1-ultra"):
        r = httpx.post(
            f"{server.base_url}/v1/{model}", json={"prompt": "x", "aspect_ratio": ratio}, timeout=30
        )
        assert_bfl_422(r, "aspect_ratio")
    r = httpx.post(
        server.base_url + "/v1/images/generations", json={"prompt": "x", "aspect_ratio": ratio}, timeout=30
    )
    assert_openai_400(r, "aspect_ratio")


@pytest.mark.parametrize("seed", [2**64, 2**63, 10**30, -1, 1.5, "seven"], ids=str)
def test_out_of_range_seed_is_refused_on_every_route(server: Server, seed: Any) -> None:
    for model in ("flux-kontext-pro", "flux-pro-1.1", "flux-pro-1.1-ultra"):
        r = httpx.post(f"{server.base_url}/v1/{model}", json={"prompt": "x", "seed": seed}, timeout=30)
        assert_bfl_422(r, "seed")
    r = httpx.post(server.base_url + "/v1/images/generations", json={"prompt": "x", "seed": seed}, timeout=30)
    assert_openai_400(r, "seed")
    r = httpx.post(
        server.base_url + "/v1/images/generations",
        json={"prompt": "x", "extra_body": {"seed": seed}},
        timeout=30,
    )
    assert_openai_400(r, "seed")
    r = httpx.post(
        server.base_url + "/v1/images/edits",
        data={"prompt": "x", "seed": str(seed)},
        files={"image": ("a.png", _png(), "image/png")},
        timeout=30,
    )
    assert_openai_400(r, "seed")


def test_the_largest_seed_is_accepted_and_kept(server: Server) -> None:
    largest = 2**63 - 1
    r = httpx.post(
        server.base_url + "/v1/flux-dev",
        json={"prompt": "x", "seed": largest, "steps": 1, "width": 256, "height": 256},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    result = poll_result(server.base_url, r.json()["id"])
    assert result["status"] == "Ready" and result["result"]["seed"] == largest, result


# -- concurrent idempotent retries ------------------------------------------------------------------


def _concurrently(n: int, send: Any) -> list[httpx.Response]:
    """Send ``n`` requests at once (all released by one barrier)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = send()
        except httpx.HTTPError as exc:  # a dropped connection is a failure too, not a hang
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_idempotent_retries_answer_one_job(server: Server) -> None:
    # A large input image keeps the first request busy (decoding, checking) while the others arrive.
    noisy = "data:image/png;base64," + base64.b64encode(_png((1024, 1024), noise=True)).decode()
    body = {"prompt": "a blue ring", "steps": 1, "input_image": noisy, "seed": 5}
    bfl = _concurrently(
        6,
        lambda: httpx.post(
            server.base_url + "/v1/flux-kontext-pro",
            json=body,
            headers={"Idempotency-Key": "concurrent-bfl"},
            timeout=60,
        ),
    )
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in bfl), bfl
    assert len({r.json()["id"] for r in bfl}) == 1

    png = _png((512, 512), noise=True)
    openai = _concurrently(
        4,
        lambda: httpx.post(
            server.base_url + "/v1/images/edits",
            data={"prompt": "a blue ring", "steps": "1", "size": "256x256"},
            files={"image": ("a.png", png, "image/png")},
            headers={"Idempotency-Key": "concurrent-openai"},
            timeout=60,
        ),
    )
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in openai), openai
    assert len({r.json()["data"][0]["url"].split("?")[0] for r in openai}) == 1


# -- lone surrogates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/flux-kontext-pro", {"prompt": "a <S> b"}, "prompt"),
        ("/v1/flux-pro-1.1", {"prompt": "<S>"}, "prompt"),
        ("/v1/flux-pro-1.1-ultra", {"prompt": "x<S>"}, "prompt"),
        ("/v1/flux-kontext-pro", {"prompt": "x", "webhook_secret": "<S>"}, "webhook_secret"),
        ("/v1/images/generations", {"prompt": "a <S> b"}, "prompt"),
        ("/v1/images/generations", {"extra_body": {"prompt": "<S>"}}, "prompt"),
        ("/v1/images/generations", {"prompt": "x", "user": "<S>"}, "user"),
        ("/v1/images/edits", {"prompt": "<S>", "images": [{"image_url": DATA_URL}]}, "prompt"),
    ],
)
def test_lone_surrogates_are_refused_at_submit(
    server: Server, path: str, body: dict[str, Any], field: str
) -> None:
    message = assert_refused(_post(server, path, _with_surrogate(body)), path, field)
    assert "surrogate" in message


def test_a_valid_surrogate_pair_is_accepted(server: Server) -> None:
    r = _post(
        server,
        "/v1/flux-dev",
        '{"prompt": "a smile \\ud83d\\ude00", "steps": 1, "width": 256, "height": 256}',
    )
    assert r.status_code == 200, r.text
    result = poll_result(server.base_url, r.json()["id"])
    assert result["status"] == "Ready" and result["result"]["prompt"] == "a smile \U0001f600"
