"""The playground says so when the embedded model drew only an approximation of the prompt.

The server marks such a result with ``details.approximation`` (one sentence) in the BFL result,
and the OpenAI API with an ``X-Fluxserve-Approximation`` header. Here the page runs in Debian's
Chromium against a real server on loopback; the mark is added to the server's real answers on
their way to the page (``page.route``), so the test does not depend on which prompts the
embedded model can draw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 60_000
SENTENCE = (
    "The embedded demo model drew an approximation: it knows simple shapes, colours and "
    "positions; 'city skyline' is outside what it can draw."
)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on loopback with no key and the embedded model (as ``fluxserve serve`` starts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    s = Server(data_dir=tmp_path_factory.mktemp("approximation"), env=env)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def page(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(server.base_url + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        yield pg
        browser.close()
    assert errors == [], f"errors on the page: {errors}"


def _mark(result: dict[str, Any]) -> dict[str, Any]:
    details = result.get("details") or {}
    return {**result, "details": {**details, "approximation": SENTENCE}}


def mark_job_results(route: Any) -> None:
    """Pass the job's event stream on, with the mark added to its ``result`` event."""
    response = route.fetch()
    frames = response.text().split("\n\n")
    for i, frame in enumerate(frames):
        lines = frame.split("\n")
        if "event: result" in lines:
            k = next(j for j, line in enumerate(lines) if line.startswith("data: "))
            lines[k] = "data: " + json.dumps(_mark(json.loads(lines[k][len("data: ") :])))
            frames[i] = "\n".join(lines)
    route.fulfill(response=response, body="\n\n".join(frames))


def mark_polled_result(route: Any) -> None:
    """The same mark on ``get_result`` (the page polls it if the event stream breaks)."""
    response = route.fetch()
    route.fulfill(response=response, body=json.dumps(_mark(response.json())))


def generate(page: Any, prompt: str) -> None:
    page.fill("#prompt", prompt)
    if not page.is_visible("#advanced .grid2"):
        page.click("#advanced summary")
    if page.is_visible("#steps"):
        page.fill("#steps", "2")
    page.click("#submit")
    page.wait_for_selector("body[data-busy=false]", timeout=WAIT_MS)
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)


def test_an_approximated_result_carries_the_sentence_an_ordinary_one_none(page: Any) -> None:
    generate(page, "a red circle in the center, on a blue background")  # drawn as asked
    assert not page.is_visible(".run .approximation")

    page.route("**/v1/jobs/*/events", mark_job_results)
    page.route("**/v1/get_result?*", mark_polled_result)
    generate(page, "a red circle on a blue background")
    note = page.locator(".run .approximation")
    assert note.is_visible() and note.inner_text() == SENTENCE
    # It sits with the image, above the status and the job's details.
    assert page.eval_on_selector(".run", "r => r.querySelector('.stage').nextElementSibling.className") == (
        "approximation"
    )
    page.unroute("**/v1/jobs/*/events")
    page.unroute("**/v1/get_result?*")

    # The OpenAI API says it in a header; the page shows it the same way.
    def mark_header(route: Any) -> None:
        response = route.fetch()
        headers = {**response.headers, "x-fluxserve-approximation": SENTENCE}
        route.fulfill(response=response, headers=headers)

    page.route("**/v1/images/generations", mark_header)
    page.select_option("#model", "dall-e-2")
    generate(page, "a red circle on a blue background")
    assert page.locator(".run .approximation").inner_text() == SENTENCE

    # The gallery shows the mark of the job whose details carry it, and no other.
    def mark_first_job(route: Any) -> None:
        response = route.fetch()
        page_of_jobs = response.json()
        page_of_jobs["data"][0] = _mark(page_of_jobs["data"][0])
        route.fulfill(response=response, body=json.dumps(page_of_jobs))

    page.route("**/v1/jobs?*", mark_first_job)
    page.click("#tab-gallery")
    page.wait_for_selector("#gallery-list .card", timeout=WAIT_MS)
    assert page.locator("#gallery-list .card").count() == 3
    notes = page.locator("#gallery-list .card .approximation")
    assert notes.count() == 1 and notes.inner_text() == SENTENCE
    assert page.locator("#gallery-list .card").first.locator(".approximation").count() == 1
