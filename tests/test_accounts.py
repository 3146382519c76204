"""Accounts, scopes, credits and limits on a real server on loopback (plain HTTP and the
official ``openai`` client), set up with the ``fluxserve accounts|keys`` commands."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import openai
import pytest

from conftest import Server, poll_result, run_cli

PROMPT = {"prompt": "a red circle", "seed": 1}


def cli(srv: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fluxserve ARGS --data-dir <server's>`` (in this process: :func:`conftest.run_cli`)."""
    done = run_cli(srv.env, *args, "--data-dir", str(srv.data_dir))
    if check:
        done.check_returncode()
    return done


def new_key(srv: Server, account: str, scope: str | None = None) -> str:
    args = ["keys", "create", "--account", account] + (["--scope", scope] if scope else [])
    return cli(srv, *args).stdout.strip()


def submit(srv: Server, key: str, model: str = "flux-dev", **body: Any) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/v1/{model}", json={**PROMPT, **body}, headers={"x-key": key})


@pytest.fixture
def team(make_server):  # type: ignore[no-untyped-def]
    """A server with accounts ``team`` (10 USD) and ``other`` (unlimited) and keys of each."""
    srv = make_server(start=False, allow_private_urls="1")
    cli(srv, "accounts", "create", "team", "--credits", "10", "--max-active", "5")
    cli(srv, "accounts", "create", "other")
    keys = {
        "team": new_key(srv, "team"),  # generate,read by default
        "team2": new_key(srv, "team", "read"),
        "gen_only": new_key(srv, "team", "generate"),
        "admin": new_key(srv, "team", "admin"),
        "other": new_key(srv, "other", "generate,read"),
        "legacy": cli(srv, "keys", "create").stdout.strip(),  # the default account, generate,read
    }
    srv.start()
    return srv, keys


# Routes that need no key: health checks, the page and its assets, signed file downloads.
OPEN = {"/healthz", "/readyz", "/", "/playground", "/playground/static/{name}", "/v1/files/{key}"}


def test_scopes_are_enforced_on_every_route(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    spec = httpx.get(f"{srv.base_url}/openapi.json").json()
    checked = 0
    for path, ops in spec["paths"].items():
        if path in OPEN:
            continue
        url = srv.base_url + path.replace("{", "").replace("}", "")  # any value: auth comes first
        for method in ops:
            need = "admin" if path.startswith("/v1/admin") else ("read" if method == "get" else "generate")
            lacking = {"admin": "team", "read": "gen_only", "generate": "team2"}[need]
            r = httpx.request(method.upper(), url, headers={"x-key": keys[lacking]}, json={})
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert need in str(r.json()), r.text
            checked += 1
    assert checked >= 25
    # The catch-all BFL route for models not in the document, and the OpenAI shape:
    assert submit(srv, keys["team2"], "flux-kontext-pro").status_code == 403
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=keys["team2"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.images.generate(model="flux-dev", prompt="a red circle", size="256x256")
    assert exc.value.code == "insufficient_scope"
    assert client.models.list().data  # reading is what this key may do
    # A key with the scope gets through; an admin key runs the admin API.
    assert httpx.get(f"{srv.base_url}/v1/admin/accounts", headers={"x-key": keys["admin"]}).status_code == 200
    assert httpx.get(f"{srv.base_url}/v1/models", headers={"x-key": keys["team"]}).status_code == 200


def test_another_accounts_job_is_invisible_everywhere(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    r = submit(srv, keys["team"], webhook_url="http://127.0.0.1:9/hook")
    assert r.status_code == 200, r.text
    job = r.json()["id"]
    done = poll_result(srv.base_url, job, headers={"x-key": keys["team"]})
    assert done["status"] == "Ready"
    # Another key of the same account sees it (accounts are teams) ...
    assert poll_result(srv.base_url, job, headers={"x-key": keys["team2"]})["status"] == "Ready"
    listed = httpx.get(f"{srv.base_url}/v1/jobs", headers={"x-key": keys["team2"]}).json()["data"]
    assert [j["id"] for j in listed] == [job]
    # ... another account's key, and a default-account key, see nothing anywhere.
    for outsider in (keys["other"], keys["legacy"]):
        h = {"x-key": outsider}
        r = httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job}, headers=h)
        assert r.json()["status"] == "Task not found"
        for method, path in (
            ("GET", f"/v1/jobs/{job}/events"),
            ("GET", f"/v1/jobs/{job}/webhooks"),
            ("POST", f"/v1/jobs/{job}/cancel"),
            ("DELETE", f"/v1/jobs/{job}"),
        ):
            r = httpx.request(method, srv.base_url + path, headers=h)
            assert r.status_code == 404, (method, path, r.text)
        listed = httpx.get(f"{srv.base_url}/v1/jobs", headers=h).json()
        assert job not in str(listed)
    # The result file is reachable only through the signed URL the owner got.
    sample = done["result"]["sample"]
    assert httpx.get(sample).status_code == 200
    assert httpx.get(sample.split("?")[0]).status_code in (401, 403, 404)


def test_credits_are_held_settled_and_refused_before_any_work(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    h = {"x-key": keys["team"]}
    credits = httpx.get(f"{srv.base_url}/v1/credits", headers=h).json()
    assert credits == {"credits": 1000.0, "unlimited": False}
    r = submit(srv, keys["team"])
    assert r.status_code == 200, r.text
    cost = r.json()["cost"]
    assert cost > 0
    assert poll_result(srv.base_url, r.json()["id"], headers=h)["status"] == "Ready"
    assert httpx.get(f"{srv.base_url}/v1/credits", headers=h).json()["credits"] == pytest.approx(1000 - cost)
    # An unlimited account still answers as before.
    other = httpx.get(f"{srv.base_url}/v1/credits", headers={"x-key": keys["other"]}).json()
    assert other["unlimited"] is True

    # A poor account: 402 in both protocols, and no job is made.
    cli(srv, "accounts", "create", "poor", "--credits", "0.01")
    poor = new_key(srv, "poor")
    time.sleep(2.1)  # key grants are cached for two seconds
    r = submit(srv, poor)
    assert r.status_code == 402, r.text
    assert "credits" in r.json()["detail"]
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=poor, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.images.generate(model="flux-dev", prompt="a red circle", size="256x256")
    assert exc.value.status_code == 402
    assert exc.value.code == "insufficient_quota"
    assert httpx.get(f"{srv.base_url}/v1/jobs", headers={"x-key": poor}).json()["data"] == []
    assert httpx.get(f"{srv.base_url}/v1/credits", headers={"x-key": poor}).json()["credits"] == 1.0

    # Top-up with the bonus rule (+10 % at 100 USD or more), through the CLI and the admin API.
    cli(srv, "accounts", "topup", "poor", "100")
    assert httpx.get(f"{srv.base_url}/v1/credits", headers={"x-key": poor}).json()["credits"] == 11001.0
    a = {"x-key": keys["admin"]}
    r = httpx.post(f"{srv.base_url}/v1/admin/accounts/poor/topup", json={"usd": 5}, headers=a)
    assert r.json() == {"credits": 500.0, "bonus": 0.0, "balance": 11501.0}
    assert submit(srv, poor).status_code == 200
    listing = cli(srv, "accounts", "list").stdout
    assert "poor" in listing and "team" in listing and "unlimited" in listing


def test_bad_admin_input_is_a_4xx(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    a = {"x-key": keys["admin"]}
    base = srv.base_url + "/v1/admin"
    assert httpx.post(f"{base}/accounts", json={"name": "team"}, headers=a).status_code == 409
    assert httpx.post(f"{base}/accounts", json={"name": "bad name!"}, headers=a).status_code == 422
    assert httpx.post(f"{base}/accounts/nobody/topup", json={"usd": 1}, headers=a).status_code == 404
    assert httpx.post(f"{base}/accounts/team/topup", json={"usd": -1}, headers=a).status_code == 422
    r = httpx.post(f"{base}/keys", json={"account": "team", "scopes": ["root"]}, headers=a)
    assert r.status_code == 422 and "detail" in r.json()
    r = httpx.post(f"{base}/keys", json={"account": "team", "scopes": ["read"]}, headers=a)
    assert r.status_code == 201
    made = r.json()
    assert made["secret"].startswith("fsk_") and made["scopes"] == ["read"]
    assert httpx.delete(f"{base}/keys/{made['id']}", headers=a).status_code == 204
    assert httpx.delete(f"{base}/keys/{made['id']}", headers=a).status_code == 404
    assert cli(srv, "keys", "create", "--account", "nobody", check=False).returncode != 0
    assert cli(srv, "keys", "create", "--account", "team", "--scope", "root", check=False).returncode != 0


def test_active_task_limit_is_a_429_with_retry_after_until_tasks_finish(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server(start=False)
    cli(srv, "accounts", "create", "busy", "--max-active", "2")
    key = new_key(srv, "busy")
    srv.start()
    h = {"x-key": key}
    first = [submit(srv, key, steps=8).json()["id"] for _ in range(2)]
    r = submit(srv, key, steps=8)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.images.generate(model="flux-dev", prompt="a red circle", size="256x256")
    assert exc.value.response.headers["Retry-After"]
    for job in first:
        assert poll_result(srv.base_url, job, headers=h, timeout=120)["status"] == "Ready"
    assert submit(srv, key, steps=2).status_code == 200  # cleared once they finished


def test_requests_per_minute_per_key_and_limits_set_by_an_admin(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    a = {"x-key": keys["admin"]}
    r = httpx.put(
        f"{srv.base_url}/v1/admin/accounts/other/limits", json={"max_active": 24, "rpm": 3}, headers=a
    )
    assert r.status_code == 200 and r.json()["rpm"] == 3, r.text
    assert httpx.put(f"{srv.base_url}/v1/admin/accounts/nobody/limits", json={}, headers=a).status_code == 404
    h = {"x-key": keys["other"]}
    for _ in range(3):
        assert httpx.get(f"{srv.base_url}/v1/models", headers=h).status_code == 200
    r = httpx.get(f"{srv.base_url}/v1/credits", headers=h)
    assert r.status_code == 429 and "per minute" in r.json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=keys["other"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.models.list()
    assert exc.value.code == "rate_limit_exceeded"
    # Per key: the account's other keys, and other accounts, are not slowed down.
    assert httpx.get(f"{srv.base_url}/v1/models", headers={"x-key": keys["team"]}).status_code == 200


def test_moderated_requests_cost_nothing(team) -> None:  # type: ignore[no-untyped-def]
    srv, keys = team
    h = {"x-key": keys["team"]}
    r = submit(srv, keys["team"], prompt="a decapitated head, gore everywhere")
    assert r.status_code == 200, r.text
    assert r.json()["cost"] > 0  # quoted, held, then released when moderation refuses it
    assert poll_result(srv.base_url, r.json()["id"], headers=h)["status"] == "Request Moderated"
    assert httpx.get(f"{srv.base_url}/v1/credits", headers=h).json()["credits"] == 1000.0
    assert httpx.get(f"{srv.base_url}/v1/usage", headers=h).json()["total_jobs"] == 0
