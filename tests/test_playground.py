"""The playground page (issue 16), driven in Debian's Chromium against a real server on loopback
that runs the embedded model.

Here the studio: the page and its files, generating (aspect ratio, seed, previews, several images
on both APIs, LoRAs, bad values, moderation, the queue and cancel) and editing dropped images. The
gallery, the theme and the API key, which the page keeps across visits, are
test_playground_gallery.py, which uses this module's fixtures and helpers.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``. Each main state of
the page is saved as a screenshot under ``docs/playground/`` (the README shows them).
"""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import Server, poll_result
from fluxserve.spec.geometry import aspect_to_size

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "playground"
MODEL = "flux-kontext-pro"
WAIT_MS = 90_000  # generous: the test machine may be busy

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's LoRA directory: empty until a test puts an adapter in it."""
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lora_dir: Path) -> Iterator[Server]:
    """One server for the module, on loopback, with no key and the embedded model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    env["FLUXSERVE_LORA_DIRS"] = str(lora_dir)
    s = Server(data_dir=tmp_path_factory.mktemp("playground"), env=env)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (empty local storage) on the playground, models loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server.base_url + "/")
    pg.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    yield pg
    context.close()
    assert errors == [], f"errors on the page: {errors}"


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return img.size, img.tobytes()


def image_bytes(page: Any, selector: str) -> bytes:
    """The bytes of the image an <img> shows (a signed URL on the server)."""
    src = page.get_attribute(selector, "src")
    assert src and src.startswith("http://127.0.0.1:"), src
    r = httpx.get(src)
    r.raise_for_status()
    return r.content


def events(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.fluxservePlayground.events")  # type: ignore[no-any-return]


def open_advanced(page: Any, steps: int | None = None, fmt: str | None = None) -> None:
    if not page.is_visible("#steps"):
        page.click("#advanced summary")
    if steps is not None:
        page.fill("#steps", str(steps))
    if fmt is not None:
        page.select_option("#output-format", fmt)


def png(size: tuple[int, int], colour: str, shape: str = "white") -> bytes:
    img = Image.new("RGB", size, colour)
    w, h = size
    img.paste(Image.new("RGB", (w // 3, h // 3), shape), (w // 3, h // 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def drop_files(page: Any, selector: str, files: list[tuple[str, bytes]]) -> None:
    """Drop files on an element as a user dragging them from a file manager does."""
    payload = [{"name": n, "b64": base64.b64encode(d).decode()} for n, d in files]
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, { type: "image/png" }));
            }
            return dt;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


# ------------------------------------------------------------------ the page itself


def test_page_served_from_package_files_at_root_and_playground(server: Server) -> None:
    for path in ("/", "/playground"):
        r = httpx.get(server.base_url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert '<script type="module" src="/playground/static/app.js">' in r.text
    static = Path(__file__).resolve().parent.parent / "src" / "fluxserve" / "web" / "static"
    for f in static.iterdir():
        r = httpx.get(f"{server.base_url}/playground/static/{f.name}")
        assert r.status_code == 200 and r.content == f.read_bytes()
        # Nothing is loaded from elsewhere: no CDN, no absolute URL in any of the page's files.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text), f.name
    assert httpx.get(server.base_url + "/playground/static/../settings.py").status_code == 404
    assert httpx.get(server.base_url + "/playground/static/nope.js").status_code == 404
    # The form's details: every model's sizes are the server's own aspect_to_size.
    config = httpx.get(server.base_url + "/playground/config").json()
    kontext = next(m for m in config["models"] if m["id"] == MODEL)
    assert kontext["family"] == "kontext" and kontext["bfl_route"] and kontext["price"] == 0.04
    assert tuple(kontext["sizes"]["16:9"]) == aspect_to_size("16:9")


# ------------------------------------------------------------------ generate


def test_generate_aspect_ratio_seed_previews_and_same_seed_same_image(page: Any) -> None:
    page.fill("#prompt", "a red circle in the center, on a blue background")
    page.click("#aspect-list label:has-text('16:9')")
    assert page.inner_text("#size-out") == "Output: 1392 × 784 px"
    page.fill("#seed", "7")
    page.check("#seed-lock")
    open_advanced(page, steps=5, fmt="png")  # a preview after every step
    assert "Estimated cost: $0.04" in page.inner_text("#cost")
    page.fill("#n", "2")
    assert "Estimated cost: $0.08 (2 images × $0.04)" in page.inner_text("#cost")
    page.fill("#n", "1")
    shot(page, "generate")

    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # the keyboard submits
    page.wait_for_selector(".run[data-state=preview] img[data-kind=preview]", timeout=WAIT_MS)
    shot(page, "live")
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    shot(page, "result")
    img = ".run img[data-kind=final]"
    assert (page.get_attribute(img, "data-width"), page.get_attribute(img, "data-height")) == ("1392", "784")
    first = image_bytes(page, img)
    assert pixels(first)[0] == (1392, 784)
    trace = [e["type"] for e in events(page)]
    assert "preview" in trace and "shown" in trace
    assert trace.index("preview") < trace.index("result") <= trace.index("shown")
    assert "Seed7" in page.inner_text(".run dl.meta").replace("\n", "").replace("\t", "")

    page.click("#submit")  # seed locked: the same image again
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    assert pixels(image_bytes(page, img)) == pixels(first)

    page.uncheck("#seed-lock")  # unlocked: a new seed is drawn and shown
    page.click("#submit")
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    assert page.input_value("#seed") != "7"
    assert pixels(image_bytes(page, img)) != pixels(first)


def test_n_images_on_both_apis(page: Any) -> None:
    page.fill("#prompt", "a green square")
    page.fill("#seed", "100")
    page.check("#seed-lock")
    open_advanced(page, steps=4)
    page.fill("#n", "2")
    page.click("#submit")  # a BFL route: one job per image, seeds counting up
    page.wait_for_selector("body[data-busy=false]", timeout=WAIT_MS)
    page.wait_for_selector(".run:nth-child(2)[data-state=ready]", timeout=WAIT_MS)
    metas = page.eval_on_selector_all(".run dl.meta", "ds => ds.map(d => d.textContent)")
    assert len(metas) == 2 and "Seed100" in metas[0] and "Seed101" in metas[1]
    assert len({page.get_attribute(f".run:nth-child({i}) img", "src") for i in (1, 2)}) == 2

    page.select_option("#model", "dall-e-2")  # only on the OpenAI API: one streamed request
    assert "Estimated cost: $0.04 (2 images × $0.02)" in page.inner_text("#cost")
    page.click("#submit")
    page.wait_for_selector("body[data-busy=false]", timeout=WAIT_MS)
    page.wait_for_selector(".run:nth-child(2)[data-state=ready]", timeout=WAIT_MS)
    types = [e["type"] for e in events(page)]
    assert types.count("image_generation.completed") == 2 and "image_generation.partial_image" in types
    assert types.index("image_generation.partial_image") < types.index("image_generation.completed")


def test_lora_picker_only_when_the_server_has_loras(page: Any, server: Server, lora_dir: Path) -> None:
    from test_loras import make_peft_lora

    from fluxserve.embedded import embedded_checkpoint

    assert page.is_hidden("#loras-box")  # none yet
    checkpoint = embedded_checkpoint()
    assert checkpoint is not None
    make_peft_lora(checkpoint, lora_dir / "vivid.safetensors", seed=3)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert page.is_visible("#loras-box") and "vivid" in page.inner_text("#lora-list")

    page.fill("#prompt", "a red circle")
    page.fill("#seed", "5")
    page.check("#seed-lock")
    open_advanced(page, steps=4, fmt="png")
    page.click("#submit")
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    plain = image_bytes(page, ".run img[data-kind=final]")
    page.check("#lora-list input[type=checkbox]")
    page.fill("#lora-list input[type=number]", "1.5")
    page.click("#submit")
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    assert pixels(image_bytes(page, ".run img[data-kind=final]")) != pixels(plain)
    job = httpx.get(f"{server.base_url}/v1/jobs", params={"limit": 1}).json()["data"][0]
    assert job["loras"] == [{"name": "vivid", "scale": 1.5}] and job["seed"] == 5


def test_bad_values_and_moderation_in_words(page: Any) -> None:
    page.fill("#prompt", "a green square")
    open_advanced(page, steps=99)
    page.click("#submit")
    page.wait_for_selector("#form-error:not([hidden])")
    assert page.inner_text("#form-error") == "Steps: Input should be less than or equal to 50."

    page.fill("#steps", "4")
    page.fill("#prompt", "a pornographic scene")
    page.click("#submit")
    page.wait_for_selector(".run[data-state=moderated]", timeout=WAIT_MS)
    text = page.inner_text(".run .status")
    assert text.startswith("The prompt was blocked by moderation: it looks like explicit sexual content")
    assert "safety tolerance 2" in text and "{" not in text
    shot(page, "moderation")


def test_queue_position_then_cancel(page: Any, server: Server) -> None:
    # Keep the worker busy, so that the page's job waits in the queue for several of the page's
    # position refreshes (2.5 s each; a 50-step job of the embedded model takes about 0.6 s).
    busy = [
        httpx.post(f"{server.base_url}/v1/{MODEL}", json={"prompt": "a blue disc", "steps": 50}).json()["id"]
        for _ in range(12)
    ]
    page.fill("#prompt", "a yellow triangle")
    open_advanced(page, steps=50)
    page.click("#submit")
    page.wait_for_selector(".run[data-state=queued]", timeout=WAIT_MS)
    status = page.inner_text(".run .status")
    assert re.fullmatch(r"Queued: (next in line|\d+ jobs? ahead)\.", status), status
    first = next(e["position"] for e in events(page) if e["type"] == "queued")
    assert first >= 1, first  # blockers are ahead of it
    # The position shown moves up as the jobs ahead finish (the page asks again while it waits).
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        positions = [e["position"] for e in events(page) if e["type"] == "queued"]
        if min(positions) < first:
            break
        time.sleep(0.2)
    assert min(positions) < first and positions == sorted(positions, reverse=True), positions
    assert page.inner_text(".run .status").startswith("Queued")
    shot(page, "queued")
    page.click("#cancel")
    page.wait_for_selector(".run[data-state=cancelled]", timeout=WAIT_MS)
    assert page.inner_text(".run .status").startswith("Cancelled")
    job_id = page.get_attribute(".run", "data-job-id")
    result = poll_result(server.base_url, job_id)
    assert result["status"] == "Error" and result["details"]["error"] == "cancelled"
    assert page.is_hidden("#cancel") and page.is_enabled("#submit")
    for j in busy:  # free the worker for the next tests
        httpx.post(f"{server.base_url}/v1/jobs/{j}/cancel")
        poll_result(server.base_url, j, timeout=120)


# ------------------------------------------------------------------ edit


def test_edit_with_dropped_files_composed_left_right(page: Any, server: Server) -> None:
    page.click("#tab-edit")
    assert page.is_visible("#drop-zone") and page.inner_text("#submit") == "Edit"
    left, right = png((320, 240), "blue", "red"), png((240, 240), "green", "yellow")
    drop_files(page, "#drop-zone", [("left.png", left), ("right.png", right)])
    page.wait_for_selector("#input-list li:nth-child(2)")
    page.check("input[name=combine][value=compose]")
    page.wait_for_selector("#compose-figure:not([hidden])")
    assert page.inner_text("#compose-size") == "Stitched input: 560 × 240 px (left | right)"
    size = page.eval_on_selector("#compose-preview", "c => [c.width, c.height]")
    assert size == [560, 240]
    page.fill("#prompt", "make the circle green")
    open_advanced(page, steps=6, fmt="png")
    shot(page, "edit-compose")
    page.click("#submit")
    page.wait_for_selector(".run[data-state=ready]", timeout=WAIT_MS)
    assert page.is_visible(".run .stage.pair figure.before img")  # before | after, side by side
    shot(page, "edit")
    # Kontext with no aspect ratio follows the (stitched) input's shape.
    want = aspect_to_size("7:3")  # 560:240
    got = (page.get_attribute(".run img[data-kind=final]", "data-width"),
           page.get_attribute(".run img[data-kind=final]", "data-height"))  # fmt: skip
    assert got == (str(want[0]), str(want[1]))
    job = httpx.get(f"{server.base_url}/v1/jobs", params={"limit": 1}).json()["data"][0]
    assert job["id"] == page.get_attribute(".run", "data-job-id")
    assert job["input_images"] == 1 and job["prompt"] == "make the circle green"
