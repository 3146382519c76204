"""Overflow routing end to end: a real fluxserve server whose models have ``route = "overflow"``
sends new jobs to a stand-in BFL upstream on loopback (tests/standin_upstreams.py) when the
estimated local wait passes ``overflow_wait_s`` (or no local worker takes the model), puts a job
the upstream did not accept back in the local queue, stops at an account's daily cap, and says
where each job ran in get_result, the jobs API, ``fluxserve usage`` and ``/metrics``."""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from standin_upstreams import BFL_KEY, COLOR, Standin, StandinServer
from test_accounts import cli, new_key

from conftest import Server, free_port, poll_result


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    server = StandinServer(free_port()).start()
    yield server.standin
    server.stop()


def overflow_env(
    local: str, upstreams: dict[str, Any], models: dict[str, Any], **extra: str
) -> dict[str, str]:
    """The environment of a server with these upstreams and models, and the stand-in's key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(
        FLUXSERVE_DEFAULT_CHECKPOINT=local,
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_UPSTREAMS=json.dumps(upstreams),
        FLUXSERVE_MODELS=json.dumps(models),
        STANDIN_BFL_KEY=BFL_KEY,
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def busy(
    standin: Standin, tmp_path_factory: pytest.TempPathFactory, slow_checkpoint: Path
) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server with three overflow models: flux-dev (to the stand-in, past 0.3 s of estimated
    wait), flux-pro (to an upstream that is down) and flux-kontext-pro (its local checkpoint is
    missing, so no worker here takes it); and keys: an operator's, a user's and one of an
    account whose overflow cap is 0 credits a day."""
    fast = {"poll_interval_s": 0.05, "max_poll_interval_s": 0.3, "api_key_env": "STANDIN_BFL_KEY"}
    upstreams = {
        "bfl": {"kind": "bfl", "base_url": standin.base_url, "max_wait_s": 30, **fast},
        "down": {"kind": "bfl", "base_url": f"http://127.0.0.1:{free_port()}", "max_retries": 1, **fast},
    }
    local = str(slow_checkpoint)
    models = {
        "flux-dev": {"checkpoint": local, "upstream": "bfl", "route": "overflow", "overflow_wait_s": 0.3},
        "flux-pro": {"checkpoint": local, "upstream": "down", "route": "overflow", "overflow_wait_s": 0},
        "flux-kontext-pro": {"checkpoint": "/nonexistent/flux", "upstream": "bfl", "route": "overflow"},
    }
    env = overflow_env(local, upstreams, models, FLUXSERVE_METRICS_ENABLED="1")
    srv = Server(data_dir=tmp_path_factory.mktemp("overflow"), env=env)
    cli(srv, "accounts", "create", "ops")
    cli(srv, "accounts", "create", "capped", "--credits", "100")
    cli(srv, "accounts", "overflow-cap", "capped", "0")
    keys = {
        "ops": new_key(srv, "ops", "admin,generate,read"),
        "user": new_key(srv, "ops"),
        "capped": new_key(srv, "capped"),
    }
    srv.start()
    yield srv, keys
    srv.stop()


def submit(srv: Server, key: str, model: str, **body: Any) -> str:
    r = httpx.post(
        f"{srv.base_url}/v1/{model}",
        json={"prompt": "a red circle", "width": 256, "height": 256, **body},
        headers={"x-key": key},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def from_standin(sample_url: str) -> bool:
    img = Image.open(io.BytesIO(httpx.get(sample_url).content)).convert("RGB")
    r, g, b = img.getpixel((img.width // 2, img.height // 2))  # type: ignore[misc]
    return abs(r - COLOR[0]) < 12 and abs(g - COLOR[1]) < 12 and abs(b - COLOR[2]) < 12


def test_no_local_worker_sends_every_job_upstream(busy: tuple[Server, dict[str, str]]) -> None:
    srv, keys = busy
    h = {"x-key": keys["user"]}
    done = poll_result(srv.base_url, submit(srv, keys["user"], "flux-kontext-pro"), headers=h, timeout=60)
    assert done["status"] == "Ready", done
    assert done["details"]["served_by"] == "upstream:bfl"
    assert done["details"]["routing"]["reason"] == "no worker here takes this model"
    assert from_standin(done["result"]["sample"])


def test_a_long_local_wait_overflows_and_a_short_one_does_not(busy: tuple[Server, dict[str, str]]) -> None:
    srv, keys = busy
    h = {"x-key": keys["user"]}
    first = poll_result(srv.base_url, submit(srv, keys["user"], "flux-dev", steps=6), headers=h, timeout=120)
    assert (
        first["details"]["served_by"] == "local"
        and "no job of this model" in first["details"]["routing"]["reason"]
    )
    assert not from_standin(first["result"]["sample"])
    burst = [submit(srv, keys["user"], "flux-dev", steps=6, seed=i) for i in range(6)]
    ended = [poll_result(srv.base_url, j, headers=h, timeout=180) for j in burst]
    assert all(e["status"] == "Ready" for e in ended), ended
    where = [e["details"]["served_by"] for e in ended]
    assert where[0] == "local" and "upstream:bfl" in where, where  # the queue was empty, then it was not
    for e in ended:
        routing = e["details"]["routing"]
        assert from_standin(e["result"]["sample"]) == (routing["served_by"] == "upstream:bfl")
        wait = routing["estimated_wait_s"]
        assert (wait > 0.3) == (routing["served_by"] == "upstream:bfl"), routing
    listed = httpx.get(f"{srv.base_url}/v1/jobs", headers=h).json()["data"]
    assert {j["details"]["served_by"] for j in listed if j["model"] == "flux-dev"} == {
        "local",
        "upstream:bfl",
    }

    usage = cli(srv, "usage", "--group-by", "served_by", "--csv").stdout
    groups = {line.split(",")[0] for line in usage.splitlines()[1:]}
    assert {"local", "upstream:bfl"} <= groups, usage
    metrics = httpx.get(f"{srv.base_url}/metrics", headers={"x-key": keys["ops"]}).text
    assert 'fluxserve_jobs_routed_total{model="flux-dev",served_by="upstream:bfl"}' in metrics


def test_a_job_the_upstream_did_not_accept_runs_here(busy: tuple[Server, dict[str, str]]) -> None:
    srv, keys = busy
    h = {"x-key": keys["user"]}
    poll_result(srv.base_url, submit(srv, keys["user"], "flux-pro", steps=6), headers=h, timeout=120)
    jobs = [submit(srv, keys["user"], "flux-pro", steps=6, seed=i) for i in range(3)]
    ended = [poll_result(srv.base_url, j, headers=h, timeout=180) for j in jobs]
    assert all(e["status"] == "Ready" and not from_standin(e["result"]["sample"]) for e in ended), ended
    back = [e["details"]["routing"] for e in ended if "did not accept" in e["details"]["routing"]["reason"]]
    assert back and all(r["served_by"] == "local" and "upstream:down" in r["reason"] for r in back), ended


def test_the_daily_overflow_cap_keeps_jobs_local(busy: tuple[Server, dict[str, str]]) -> None:
    srv, keys = busy
    h = {"x-key": keys["capped"]}
    r = poll_result(srv.base_url, submit(srv, keys["capped"], "flux-kontext-pro"), headers=h, timeout=60)
    routing = r["details"]["routing"]
    assert routing["served_by"] == "local" and "overflow cap (0 of 0 credits today)" in routing["reason"], r
    # Its local checkpoint is missing, so here it fails, with the reason, and costs nothing.
    assert r["status"] == "Error" and "/nonexistent/flux" in r["details"]["error"], r
    assert httpx.get(f"{srv.base_url}/v1/credits", headers=h).json()["credits"] == 10_000
    accounts = httpx.get(f"{srv.base_url}/v1/admin/accounts", headers={"x-key": keys["ops"]}).json()
    assert {a["name"]: a["overflow_credits_per_day"] for a in accounts}["capped"] == 0
    r = httpx.put(
        f"{srv.base_url}/v1/admin/accounts/capped/overflow-cap",
        json={"credits_per_day": None},
        headers={"x-key": keys["ops"]},
    )
    assert r.status_code == 200 and r.json()["overflow_credits_per_day"] is None


@pytest.fixture(scope="module")
def narrow(
    standin: Standin, tmp_path_factory: pytest.TempPathFactory, slow_checkpoint: Path
) -> Iterator[Server]:
    """A server whose upstream lane has one slot (``overflow_concurrency = 1``) and whose
    flux-dev overflows as soon as any local wait is estimated (``overflow_wait_s = 0``)."""
    fast = {"poll_interval_s": 0.05, "max_poll_interval_s": 0.2, "api_key_env": "STANDIN_BFL_KEY"}
    upstreams = {"bfl": {"kind": "bfl", "base_url": standin.base_url, "max_wait_s": 60, **fast}}
    local = str(slow_checkpoint)
    models = {"flux-dev": {"checkpoint": local, "upstream": "bfl", "route": "overflow", "overflow_wait_s": 0}}
    env = overflow_env(local, upstreams, models, FLUXSERVE_OVERFLOW_CONCURRENCY="1")
    srv = Server(data_dir=tmp_path_factory.mktemp("narrow"), env=env)
    srv.start()
    yield srv
    srv.stop()


def routing_of(srv: Server, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job_id})
    return dict(r.json()["details"]["routing"])


def test_a_longer_upstream_backlog_keeps_a_job_local(narrow: Server) -> None:
    """Overflow compares the two waits: with the upstream lane's one slot taken by a job that
    takes seconds there, a job whose local wait is shorter stays local, and says why."""
    srv = narrow
    post = {"prompt": "a red circle", "width": 256, "height": 256}

    def submit(**body: Any) -> str:
        r = httpx.post(f"{srv.base_url}/v1/flux-dev", json={**post, **body})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    first = poll_result(srv.base_url, submit(steps=2), timeout=120)  # the local time to beat
    slow = math.ceil(2 * first["result"]["timings"]["engine_s"])  # the upstream takes twice as long
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
    hog = threading.Thread(  # the local queue is empty: ten images of 50 steps run here, one job
        target=lambda: client.images.generate(
            model="flux-dev", prompt="a red square", n=10, extra_body={"steps": 50}
        )
    )
    hog.start()
    while not (listed := httpx.get(f"{srv.base_url}/v1/jobs").json()["data"]) or len(listed) < 2:
        time.sleep(0.05)
    assert listed[0]["details"]["served_by"] == "local", listed[0]
    first_up = submit(steps=2, prompt=f"a blue square [slow={slow}]")  # no upstream time known yet
    assert routing_of(srv, first_up)["served_by"] == "upstream:bfl"
    done = poll_result(srv.base_url, first_up, timeout=slow + 60)
    assert done["status"] == "Ready" and from_standin(done["result"]["sample"]), done
    holds_lane = submit(steps=2, prompt=f"a green star [slow={10 * slow}]")  # the lane was empty: it goes
    assert routing_of(srv, holds_lane)["served_by"] == "upstream:bfl"
    stays = submit(steps=2, prompt="a red star")
    routing = routing_of(srv, stays)
    assert hog.is_alive(), (
        "the ten-image local job ended before the upstream one: the test needs a slower one"
    )
    assert routing["served_by"] == "local", routing
    assert "but the upstream lane's estimated wait is" in routing["reason"], routing
    assert routing["estimated_wait_s"] > 0
    hog.join()
