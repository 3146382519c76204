"""The playground page (issue 16) across visits: the gallery of past jobs (and the copied code
that makes the same image again), the theme (the system's, or the toggle's, remembered) with the
tabs' keyboard use, and the API key, asked once and kept in local storage. Driven in Debian's
Chromium against a real server on loopback that runs the embedded model.

The server, browser and page fixtures and the helpers are test_playground.py's (bound here from
it, so this module gets its own server and browser, started the same way); screenshots go under
``docs/playground/`` as there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_playground
from test_playground import CHROMIUM, MODEL, WAIT_MS, open_advanced, pixels, shot

from conftest import Server, poll_result

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

# test_playground's fixtures, bound here: this module gets its own server (with its LoRA
# directory), browser and pages, made as there.
lora_dir = test_playground.lora_dir
server = test_playground.server
browser = test_playground.browser
page = test_playground.page


# ------------------------------------------------------------------ gallery


def test_gallery_lists_jobs_and_copy_as_python_reproduces_the_image(
    page: Any, server: Server, tmp_path: Path
) -> None:
    body = {"prompt": "a white star in the top right", "seed": 42, "steps": 4, "aspect_ratio": "3:2"}
    job_id = httpx.post(f"{server.base_url}/v1/{MODEL}", json=body).json()["id"]
    made = poll_result(server.base_url, job_id)
    original = httpx.get(made["result"]["sample"]).content

    page.click("#tab-gallery")
    page.wait_for_selector(f"#gallery-list .card[data-job-id='{job_id}'] img", timeout=WAIT_MS)
    listed = httpx.get(f"{server.base_url}/v1/jobs", params={"limit": 24}).json()["data"]
    cards = page.eval_on_selector_all("#gallery-list .card", "cs => cs.map(c => c.dataset.jobId)")
    assert cards == [j["id"] for j in listed] and cards[0] == job_id  # newest first
    card = f"#gallery-list .card[data-job-id='{job_id}']"
    text = page.inner_text(card)
    for expected in ("a white star in the top right", "42", "1248 × 832 px", MODEL, "$0.04", "engine"):
        assert expected in text
    shot(page, "gallery")

    for label in ("Python (OpenAI)", "Python (BFL)"):
        page.click(f"{card} button:has-text('{label}')")
        page.wait_for_selector("#code-dialog[open]")
        code = page.inner_text("#code-text")
        if label == "Python (BFL)":
            shot(page, "code")
        page.click("#code-close")
        workdir = tmp_path / label.split("(")[1].rstrip(")").lower()
        workdir.mkdir()
        (workdir / "snippet.py").write_text(code)
        env = {k: v for k, v in os.environ.items() if k != "FLUXSERVE_API_KEY"}
        run = subprocess.run(
            [sys.executable, "snippet.py"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        made_again = (workdir / run.stdout.strip().splitlines()[-1]).read_bytes()
        assert pixels(made_again) == pixels(original), label

    # "Reuse settings" puts the job's request back in the form, seed locked.
    page.click(f"{card} button:has-text('Reuse settings')")
    assert page.input_value("#prompt") == body["prompt"] and page.input_value("#seed") == "42"
    assert page.is_checked("#seed-lock") and page.input_value("#steps") == "4"
    assert page.is_checked("#aspect-list input[value='3:2']")


def test_dark_theme(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    pg = context.new_page()
    pg.goto(server.base_url + "/playground")
    pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    background = pg.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 22, 26)"
    shot(pg, "dark")
    pg.focus("#tab-generate")  # the tabs work with the keyboard
    pg.keyboard.press("ArrowRight")
    assert pg.get_attribute("#tab-edit", "aria-selected") == "true" and pg.is_visible("#drop-zone")
    assert pg.evaluate("document.activeElement.id") == "tab-edit"
    pg.keyboard.press("End")
    assert pg.is_visible("#panel-gallery") and pg.is_hidden("#panel-studio")
    pg.click("#theme-toggle")  # the toggle overrides the system, and is remembered
    assert pg.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    pg.reload()
    pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert pg.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    context.close()


# ------------------------------------------------------------------ API key (last: adds a key)


def test_api_key_asked_once_kept_in_local_storage_never_in_urls(browser: Any, server: Server) -> None:
    key = subprocess.run(
        [sys.executable, "-m", "fluxserve", "keys", "create", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=server.env,
        check=True,
    ).stdout.strip()
    time.sleep(1.2)  # the server caches "is there any key" for about a second
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def record(request: Any) -> None:
        with lock:
            seen.append((request.url, request.headers.get("x-key")))

    pg.on("request", record)
    pg.goto(server.base_url + "/")
    pg.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
    assert "needs a valid API key" in pg.inner_text("#notice")
    shot(pg, "api-key")
    pg.fill("#key-input", key)
    pg.click("#key-save")
    pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert pg.evaluate("localStorage.getItem('fluxserve.apiKey')") == key
    pg.fill("#prompt", "a black square")
    open_advanced(pg, steps=4)
    pg.click("#submit")
    pg.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    # Entered once: a new visit uses the stored key without asking.
    pg.reload()
    pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert not pg.evaluate("document.getElementById('key-dialog').open")
    with lock:
        api = [(u, k) for u, k in seen if "/v1/" in u and "/v1/files/" not in u]
        assert api and all(key not in u for u, _ in seen)
        assert all(k == key for u, k in api if "/v1/jobs" in u or "/v1/flux" in u), api
    context.close()
