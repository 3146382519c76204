"""Upstream providers (fluxserve as a gateway), end to end: a real fluxserve server forwards
models to stand-in BFL and OpenAI-compatible upstreams on loopback (tests/standin_upstreams.py),
driven by plain HTTP BFL polling and the official ``openai`` client; and, on PostgreSQL, a
``fluxserve worker`` that takes only a forwarded model beside a stateless API node. The settings,
catalog and engine below the server are test_upstream_engine.py."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from standin_upstreams import BFL_KEY, COLOR, OPENAI_KEY, RETRY_AFTER_S, Standin, StandinServer

from conftest import Server, free_port, poll_result


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    server = StandinServer(free_port()).start()
    yield server.standin
    server.stop()


def upstream_settings(standin: Standin) -> tuple[dict[str, Any], dict[str, Any]]:
    fast = {"poll_interval_s": 0.05, "max_poll_interval_s": 0.3, "api_key_env": "STANDIN_BFL_KEY"}
    upstreams = {
        "bfl": {"kind": "bfl", "base_url": standin.base_url, "max_wait_s": 30, **fast},
        "bflshort": {"kind": "bfl", "base_url": standin.base_url, "max_wait_s": 1.5, **fast},
        "down": {"kind": "bfl", "base_url": f"http://127.0.0.1:{free_port()}", "max_retries": 2, **fast},
        "oai": {
            "kind": "openai",
            "base_url": standin.base_url + "/openai/v1",
            "api_key_env": "STANDIN_OPENAI_KEY",
            "response_format": "url",
            "poll_interval_s": 0.05,
        },
        "nokey": {"kind": "bfl", "base_url": standin.base_url, "api_key_env": "STANDIN_MISSING_KEY"},
        "oaib64": {
            "kind": "openai",
            "base_url": standin.base_url + "/openai/v1",
            "api_key_env": "STANDIN_OPENAI_KEY",
        },
    }
    models = {
        "flux-2-max": {"upstream": "bfl", "price": 0.09},
        "flux-pro": {"upstream": "bflshort"},
        "flux-dev": {"upstream": "down"},
        "gpt-image-1": {
            "upstream": "oai",
            "upstream_model": "gpt-image-1",
            "upstream_price": 0.042,
            "price": 0.05,
        },
        "dall-e-3": {"upstream": "oaib64", "upstream_model": "gpt-image-1-mini"},
        "flux-2-klein-4b": {"upstream": "nokey"},
    }
    return upstreams, models


@pytest.fixture(scope="module")
def gateway(
    standin: Standin, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Any
) -> Iterator[Server]:
    """fluxserve with five models forwarded (two BFL upstreams, one down, two OpenAI ones); the
    rest stay local. The upstream keys come from the environment variables the settings name."""
    import os

    upstreams, models = upstream_settings(standin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        FLUXSERVE_DEFAULT_CHECKPOINT=str(tiny_checkpoint),
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_UPSTREAMS=json.dumps(upstreams),
        FLUXSERVE_MODELS=json.dumps(models),
        FLUXSERVE_URL_TTL_S="60",
        STANDIN_BFL_KEY=BFL_KEY,
        STANDIN_OPENAI_KEY=OPENAI_KEY,
    )
    server = Server(data_dir=tmp_path_factory.mktemp("gateway"), env=env)
    server.start()
    yield server
    server.stop()


def submit(gateway: Server, model: str, prompt: str, **body: Any) -> str:
    r = httpx.post(f"{gateway.base_url}/v1/{model}", json={"prompt": prompt, **body}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def job_row(gateway: Server, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(gateway.data_dir / "fluxserve.sqlite3") as db:
        status, result, details = db.execute(
            "SELECT status, result, details FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return {
        "status": status,
        "result": json.loads(result or "null"),
        "details": json.loads(details or "null"),
    }


def is_standin_image(data: bytes, size: tuple[int, int]) -> bool:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = img.getpixel((img.width // 2, img.height // 2))  # type: ignore[misc]
    return img.size == size and abs(r - COLOR[0]) < 12 and abs(g - COLOR[1]) < 12 and abs(b - COLOR[2]) < 12


def test_bfl_upstream_slow_result_is_served_from_our_storage(gateway: Server, standin: Standin) -> None:
    job_id = submit(gateway, "flux-2-max", "a red fox [slow=1.5]", width=512, height=384, seed=7)
    first = httpx.get(f"{gateway.base_url}/v1/get_result", params={"id": job_id}).json()
    assert first["status"] == "Pending"
    body = poll_result(gateway.base_url, job_id, timeout=30)
    assert body["status"] == "Ready", body
    sample = body["result"]["sample"]
    assert sample.startswith(gateway.base_url)  # our signed URL, not the upstream's
    sent = next(s for s in standin.submissions if s["prompt"] == "a red fox [slow=1.5]")
    assert (sent["model"], sent["width"], sent["height"], sent["seed"]) == ("flux-2-max", 512, 384, 7)
    # The upstream's URL worked once (our download) and has expired since ...
    assert standin.downloads and all(n >= 1 for n in standin.downloads.values())
    expired = [rid for rid, n in standin.downloads.items() if n == 1]
    for rid in expired:
        assert httpx.get(f"{standin.base_url}/results/{rid}.png").status_code == 403
    # ... while ours still serves, and polling again signs a fresh URL for the same file.
    r = httpx.get(sample)
    assert r.status_code == 200 and is_standin_image(r.content, (512, 384))
    again = poll_result(gateway.base_url, job_id)["result"]["sample"]
    assert httpx.get(again).status_code == 200
    # Cost at the upstream's price (BFL reported 7 credits), with the upstream's task id.
    result = job_row(gateway, job_id)["result"]
    assert result["upstream"] == "bfl" and result["upstream_model"] == "flux-2-max"
    assert result["upstream_cost_usd"] == pytest.approx(0.07)
    assert len(result["upstream_ids"]) == 1


def test_bfl_upstream_429_is_retried_after_retry_after(gateway: Server, standin: Standin) -> None:
    prompt = "a lighthouse [poll429=2] [submit429=1]"
    job_id = submit(gateway, "flux-2-max", prompt)
    body = poll_result(gateway.base_url, job_id, timeout=30)
    assert body["status"] == "Ready", body
    times = [t for p, t in standin.rate_limited if p == prompt]
    assert len(times) == 3  # one refused submission, two refused polls, then success
    assert all(b - a >= RETRY_AFTER_S * 0.9 for a, b in zip(times, times[1:], strict=False))


@pytest.mark.parametrize(
    ("knob", "status", "category"),
    [
        ("[moderate=request]", "Request Moderated", "Derivative Works Filter"),
        ("[moderate=content]", "Content Moderated", "NSFW"),
    ],
)
def test_bfl_upstream_moderation_maps_exactly(gateway: Server, knob: str, status: str, category: str) -> None:
    job_id = submit(gateway, "flux-2-max", f"a harbour {knob}")
    body = poll_result(gateway.base_url, job_id, timeout=30)
    assert body["status"] == status
    assert body["result"] is None
    assert body["details"]["moderation"] == {"category": category, "source": "upstream:bfl"}


def test_bfl_upstream_error_and_down_and_bounded_wait(gateway: Server) -> None:
    failed = submit(gateway, "flux-2-max", "a storm [error]")
    down = submit(gateway, "flux-dev", "anything")
    started = time.monotonic()
    slow = submit(gateway, "flux-pro", "a glacier [slow=60]")
    body = poll_result(gateway.base_url, failed, timeout=30)
    assert body["status"] == "Error" and "reported Error" in body["details"]["error"]
    body = poll_result(gateway.base_url, down, timeout=30)
    assert body["status"] == "Error"
    assert "'down' is unreachable at http://127.0.0.1:" in body["details"]["error"]
    body = poll_result(gateway.base_url, slow, timeout=30)
    assert body["status"] == "Error"
    assert "did not finish within 1.5 s" in body["details"]["error"]
    assert time.monotonic() - started < 20


def test_openai_upstream_through_the_openai_client(gateway: Server, standin: Standin) -> None:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    prompt = "a teapot [slow=0.5] [submit429=1]"
    result = client.images.generate(
        model="gpt-image-1", prompt=prompt, size="1024x1024", response_format="url"
    )
    url = result.data[0].url
    assert url is not None and url.startswith(gateway.base_url)
    sent = [s for s in standin.submissions if s.get("prompt") == prompt]
    assert len(sent) == 2 and sent[-1]["model"] == "gpt-image-1" and sent[-1]["size"] == "1024x1024"
    assert sent[-1]["response_format"] == "url"
    # The upstream's one-time URL was spent by our download; ours serves the image.
    r = httpx.get(url)
    assert r.status_code == 200 and is_standin_image(r.content, (1024, 1024))
    # b64_json from the upstream (another OpenAI upstream, another model name there)
    b64 = client.images.generate(
        model="dall-e-3", prompt="a kettle", size="1024x1024", response_format="b64_json"
    )
    assert b64.data[0].b64_json
    assert (
        next(s for s in standin.submissions if s.get("prompt") == "a kettle")["model"] == "gpt-image-1-mini"
    )


def test_input_images_are_forwarded_to_edits_and_as_bfl_input_images(
    gateway: Server, standin: Standin
) -> None:
    import base64

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 90, 200)).save(buf, format="PNG")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    edited = client.images.edit(
        model="gpt-image-1",
        image=("in.png", buf.getvalue(), "image/png"),
        prompt="paint it red",
        size="1024x1024",
    )
    assert edited.data[0].url or edited.data[0].b64_json
    sent = next(s for s in standin.submissions if s.get("prompt") == "paint it red")
    assert sent["edit"] is True and sent["images"] == 1 and sent["model"] == "gpt-image-1"
    b64 = base64.b64encode(buf.getvalue()).decode()
    job_id = submit(gateway, "flux-2-max", "recolour it", input_image=b64, width=512, height=512)
    assert poll_result(gateway.base_url, job_id, timeout=30)["status"] == "Ready"
    sent = next(s for s in standin.submissions if s.get("prompt") == "recolour it")
    forwarded = Image.open(io.BytesIO(base64.b64decode(sent["input_image"])))
    assert forwarded.convert("RGB").getpixel((32, 32)) == (0, 90, 200)


def test_streaming_a_forwarded_model_ends_with_the_completed_image(gateway: Server) -> None:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    stream = client.images.generate(
        model="gpt-image-1", prompt="a streamed kite", size="1024x1024", stream=True, partial_images=1
    )
    events = list(stream)
    assert events and events[-1].type == "image_generation.completed"
    import base64

    assert is_standin_image(base64.b64decode(events[-1].b64_json), (1024, 1024))


def test_openai_upstream_moderation_and_failure(gateway: Server) -> None:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="gpt-image-1", prompt="a cat [moderate]", size="1024x1024")
    assert refused.value.code == "moderation_blocked"
    with pytest.raises(openai.InternalServerError) as failed:
        client.images.generate(model="gpt-image-1", prompt="a dog [error]", size="1024x1024")
    assert "answered HTTP 500" in str(failed.value)


def test_openai_upstream_cost_is_the_configured_upstream_price(gateway: Server) -> None:
    job_id = submit(gateway, "flux-2-max", "warm-up")  # any job: find the OpenAI one by its prompt
    poll_result(gateway.base_url, job_id, timeout=30)
    with sqlite3.connect(gateway.data_dir / "fluxserve.sqlite3") as db:
        rows = db.execute(
            "SELECT result FROM jobs WHERE model = 'gpt-image-1' AND status = 'ready'"
        ).fetchall()
    results = [json.loads(r[0]) for r in rows]
    assert results and all(r["upstream_cost_usd"] == pytest.approx(0.042) for r in results)


def test_cancel_stops_waiting_on_the_upstream(gateway: Server) -> None:
    job_id = submit(gateway, "flux-2-max", "a slow river [slow=60]")
    deadline = time.monotonic() + 10
    while (
        httpx.get(f"{gateway.base_url}/v1/get_result", params={"id": job_id}).json().get("progress", 0) == 0
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(f"{gateway.base_url}/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    body = poll_result(gateway.base_url, job_id, timeout=10)
    assert body["status"] == "Error" and body["details"]["error"] == "cancelled"


def test_a_bfl_upstream_without_its_key_leaves_only_its_models_unavailable(gateway: Server) -> None:
    r = httpx.post(f"{gateway.base_url}/v1/flux-2-klein-4b", json={"prompt": "a fern"})
    assert r.status_code == 503
    assert "upstream 'nokey' has no API key: set STANDIN_MISSING_KEY" in r.json()["detail"]


def test_a_local_model_still_runs_beside_the_upstreams(gateway: Server) -> None:
    body = poll_result(
        gateway.base_url, submit(gateway, "flux-pro-1.1", "a meadow", width=256, height=256), timeout=60
    )
    assert body["status"] == "Ready"
    assert not is_standin_image(httpx.get(body["result"]["sample"]).content, (256, 256))


def test_scale_out_worker_takes_forwarded_models_without_loading_anything(
    standin: Standin, postgres_server: Any, tmp_path: Any
) -> None:
    """PostgreSQL dispatch: a ``fluxserve worker`` that takes only a forwarded model loads no
    checkpoint, and a stateless API node serves its result from the shared storage."""
    import os
    import subprocess
    import sys

    upstreams, models = upstream_settings(standin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXSERVE_", "AWS_"))}
    env.update(
        FLUXSERVE_DATABASE_URL=postgres_server.new_database(),
        FLUXSERVE_DATA_DIR=str(tmp_path),  # shared local storage and URL secret
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_UPSTREAMS=json.dumps(upstreams),
        FLUXSERVE_MODELS=json.dumps(models),
        STANDIN_BFL_KEY=BFL_KEY,
        STANDIN_OPENAI_KEY=OPENAI_KEY,
    )
    assert subprocess.run([sys.executable, "-m", "fluxserve", "db", "upgrade"], env=env).returncode == 0
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fluxserve", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in (["serve", "--no-worker", "--port", str(port)], ["worker", "--models", "flux-2-max"])
    ]
    try:
        worker = procs[1]
        assert worker.stdout is not None
        line = worker.stdout.readline()
        while line and "fluxserve worker ready" not in line:
            line = worker.stdout.readline()
        assert line.strip().endswith("take flux-2-max"), line
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "API node not ready"
            time.sleep(0.1)
        r = httpx.post(
            f"{base}/v1/flux-2-max", json={"prompt": "a scaled-out fox", "width": 320, "height": 240}
        )
        assert r.status_code == 200, r.text
        body = poll_result(base, r.json()["id"], timeout=30)
        assert body["status"] == "Ready", body
        image = httpx.get(body["result"]["sample"])
        assert image.status_code == 200 and is_standin_image(image.content, (320, 240))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
