"""The playground's gallery says where an overflow model's job ran, and why: a real server on
loopback whose flux-kontext-pro has ``route = "overflow"`` (its local checkpoint is missing, so
every job goes to a stand-in BFL upstream on loopback), seen in Debian's Chromium."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standin_upstreams import BFL_KEY, StandinServer

from conftest import Server, free_port, poll_result

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    standin = StandinServer(free_port()).start()
    upstreams = {
        "bfl": {
            "kind": "bfl",
            "base_url": standin.standin.base_url,
            "api_key_env": "STANDIN_BFL_KEY",
            "poll_interval_s": 0.05,
        }
    }
    models = {"flux-kontext-pro": {"checkpoint": "/nonexistent/flux", "upstream": "bfl", "route": "overflow"}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_UPSTREAMS=json.dumps(upstreams),
        FLUXSERVE_MODELS=json.dumps(models),
        STANDIN_BFL_KEY=BFL_KEY,
    )
    s = Server(data_dir=tmp_path_factory.mktemp("overflow-page"), env=env)
    s.start()
    yield s
    s.stop()
    standin.stop()


def test_the_gallery_card_shows_where_the_job_ran(server: Server) -> None:
    from playwright.sync_api import sync_playwright

    r = httpx.post(f"{server.base_url}/v1/flux-kontext-pro", json={"prompt": "a red circle"})
    assert r.status_code == 200, r.text
    assert poll_result(server.base_url, r.json()["id"], timeout=60)["status"] == "Ready"
    r = httpx.post(f"{server.base_url}/v1/flux-dev", json={"prompt": "a blue square", "steps": 2})
    assert poll_result(server.base_url, r.json()["id"], timeout=60)["status"] == "Ready"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.base_url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        page.click("#tab-gallery")
        page.wait_for_selector("#gallery-list .card", timeout=WAIT_MS)
        cards = page.locator("#gallery-list .card")
        assert cards.count() == 2
        texts = [cards.nth(i).inner_text() for i in range(2)]
        browser.close()
    assert errors == [], errors
    kontext = next(t for t in texts if "flux-kontext-pro" in t)
    assert "Served by" in kontext and "upstream:bfl: no worker here takes this model" in kontext
    assert "Served by" not in next(t for t in texts if "flux-dev" in t)  # not an overflow model
