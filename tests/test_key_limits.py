"""Per-key limits (``max_active``, ``rpm``) on top of the account's, on real servers on
loopback: set with ``fluxserve keys create|limits`` and ``PUT /v1/admin/keys/{id}/limits``,
answered with 429 + ``Retry-After`` in both protocols (the official ``openai`` client for the
OpenAI shape), on SQLite and on two API nodes sharing one PostgreSQL database."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import PostgresServer, Server, poll_result, run_cli

PROMPT = {"prompt": "a red circle", "seed": 1}
LONG = 50
"""Steps of a job that stays active while a test looks (it is cancelled, never waited for)."""
ENDED = ("Error", "Ready")
"""A cancelled job ends as Error, or Ready when it finished before the cancel reached it."""


def cli(
    srv: Server, *args: str, key_id: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``fluxserve ARGS [-- KEY_ID]`` against the server's data directory (or database), as a
    user runs it (a key id may start with '-', so it goes after ``--``)."""
    extra = [] if "FLUXSERVE_DATABASE_URL" in srv.env else ["--data-dir", str(srv.data_dir)]
    tail = ["--", key_id] if key_id is not None else []
    done = run_cli(srv.env, *args, *extra, *tail)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def submit(srv: Server, key: str, steps: int = 8, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{srv.base_url}/v1/flux-dev", json={**PROMPT, "steps": steps, **body}, headers={"x-key": key}
    )


def cancel(srv: Server, key: str, job_id: str) -> None:
    r = httpx.post(f"{srv.base_url}/v1/jobs/{job_id}/cancel", headers={"x-key": key})
    assert r.status_code in (200, 409), r.text  # 409: it had ended already


def new_key(srv: Server, admin: str, account: str, **limits: int) -> dict[str, Any]:
    r = httpx.post(
        f"{srv.base_url}/v1/admin/keys", json={"account": account, **limits}, headers={"x-key": admin}
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, slow_checkpoint: Path):  # type: ignore[no-untyped-def]
    """One SQLite server (steps slow enough to keep jobs active) with account ``team`` (5
    active tasks, no rpm), account ``small`` (2 requests per minute per key) and an admin key."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env.update(FLUXSERVE_DEFAULT_CHECKPOINT=str(slow_checkpoint), FLUXSERVE_LOG_LEVEL="warning")
    srv = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    cli(srv, "accounts", "create", "team", "--max-active", "5")
    cli(srv, "accounts", "create", "small", "--rpm", "2")
    admin = cli(srv, "keys", "create", "--account", "team", "--scope", "admin").stdout.strip()
    srv.start()
    try:
        yield srv, admin
    finally:
        srv.stop()


def test_key_active_limit_is_a_429_in_both_shapes_until_its_tasks_end(keyed) -> None:  # type: ignore[no-untyped-def]
    srv, admin = keyed
    capped = new_key(srv, admin, "team", max_active=2)
    assert capped["max_active"] == 2 and capped["rpm"] is None
    key = capped["secret"]
    first, second = (submit(srv, key, steps=LONG).json()["id"] for _ in range(2))
    r = submit(srv, key)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    detail = r.json()["detail"]
    assert capped["id"] in detail and "this key's own limit" in detail and "fluxserve keys limits" in detail
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.images.generate(model="flux-dev", prompt="a red circle", size="256x256")
    assert exc.value.code == "rate_limit_exceeded" and exc.value.response.headers["Retry-After"]
    assert "this key's own limit" in str(exc.value)
    # The tighter limit wins: the account (5 active tasks) still takes its other keys' jobs.
    plain = new_key(srv, admin, "team")["secret"]
    other = submit(srv, plain, steps=1)
    assert other.status_code == 200, other.text
    # Cleared as the key's tasks end: one ends, a new one fits, and the limit holds again.
    cancel(srv, key, first)
    assert poll_result(srv.base_url, first, headers={"x-key": key}, timeout=120)["status"] in ENDED
    third = submit(srv, key, steps=LONG)
    assert third.status_code == 200, third.text
    assert submit(srv, key).status_code == 429
    for job in (second, third.json()["id"]):
        cancel(srv, key, job)
        assert poll_result(srv.base_url, job, headers={"x-key": key}, timeout=120)["status"] in ENDED
    assert submit(srv, key, steps=1).status_code == 200


def test_key_rpm_and_the_tighter_of_key_and_account(keyed) -> None:  # type: ignore[no-untyped-def]
    srv, admin = keyed
    limited = new_key(srv, admin, "team", rpm=2)
    h = {"x-key": limited["secret"]}
    for _ in range(2):
        assert httpx.get(f"{srv.base_url}/v1/models", headers=h).status_code == 200
    r = httpx.get(f"{srv.base_url}/v1/credits", headers=h)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "2 requests per minute" in r.json()["detail"] and "this key's own limit" in r.json()["detail"]
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=limited["secret"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.models.list()
    assert exc.value.code == "rate_limit_exceeded" and "this key's own limit" in str(exc.value)
    # Another key of the same account is not slowed down.
    plain = new_key(srv, admin, "team")["secret"]
    assert httpx.get(f"{srv.base_url}/v1/models", headers={"x-key": plain}).status_code == 200
    # A key limit above its account's does not raise it: the account's (2 per key) applies.
    loose = new_key(srv, admin, "small", rpm=10)["secret"]
    for _ in range(2):
        assert httpx.get(f"{srv.base_url}/v1/models", headers={"x-key": loose}).status_code == 200
    r = httpx.get(f"{srv.base_url}/v1/credits", headers={"x-key": loose})
    assert r.status_code == 429 and "account 'small'" in r.json()["detail"], r.text
    assert "own limit" not in r.json()["detail"]


def test_admin_sets_and_lists_key_limits(keyed) -> None:  # type: ignore[no-untyped-def]
    srv, admin = keyed
    a = {"x-key": admin}
    made = new_key(srv, admin, "team")
    url = f"{srv.base_url}/v1/admin/keys/{made['id']}/limits"
    r = httpx.put(url, json={"rpm": 1, "max_active": 3}, headers=a)
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["id"], info["account"], info["rpm"], info["max_active"]) == (made["id"], "team", 1, 3)
    h = {"x-key": made["secret"]}
    assert httpx.get(f"{srv.base_url}/v1/models", headers=h).status_code == 200
    assert httpx.get(f"{srv.base_url}/v1/models", headers=h).status_code == 429
    # Listed with its limits: the key listing and the account's info.
    listed = {k["id"]: k for k in httpx.get(f"{srv.base_url}/v1/admin/keys", headers=a).json()}
    assert (listed[made["id"]]["rpm"], listed[made["id"]]["max_active"]) == (1, 3)
    team = httpx.get(f"{srv.base_url}/v1/admin/accounts/team", headers=a).json()
    assert {k["id"]: k["rpm"] for k in team["keys"]}[made["id"]] == 1
    # Null (or left out) removes a limit.
    r = httpx.put(url, json={}, headers=a)
    assert r.status_code == 200 and r.json()["rpm"] is None and r.json()["max_active"] is None
    assert httpx.get(f"{srv.base_url}/v1/models", headers=h).status_code == 200
    # Bad input is a 4xx in BFL's shape; only admin keys may set limits.
    for body in ({"rpm": 0}, {"max_active": -1}, {"burst": 5}, {"rpm": "many"}):
        r = httpx.put(url, json=body, headers=a)
        assert r.status_code == 422 and "detail" in r.json(), (body, r.text)
    for missing in ("nosuchkey", "x" * 300, "%C3%A9t%C3%A9"):
        r = httpx.put(f"{srv.base_url}/v1/admin/keys/{missing}/limits", json={}, headers=a)
        assert r.status_code == 404 and "detail" in r.json(), (missing, r.text)
    r = httpx.put(url, json={"rpm": 5}, headers=h)
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_cli_key_limits_also_for_default_account_keys(keyed) -> None:  # type: ignore[no-untyped-def]
    srv, admin = keyed
    # keys create --account NAME [--scope ...] as before, now with --max-active/--rpm.
    made = cli(
        srv,
        "keys",
        "create",
        "--account",
        "team",
        "--scope",
        "generate,read",
        "--rpm",
        "7",
        "--max-active",
        "3",
    )
    key_id = made.stderr.split("Created key ")[1].split()[0]
    # A default-account key (no --account) capped at one active task.
    solo = cli(srv, "keys", "create", "--name", "script", "--max-active", "1")
    solo_id = solo.stderr.split("Created key ")[1].split()[0]
    listing = cli(srv, "keys", "list").stdout
    row = next(line for line in listing.splitlines() if key_id in line)
    assert "team" in row and "7" in row and "3" in row, listing
    assert "default" in next(line for line in listing.splitlines() if solo_id in line)

    secret = solo.stdout.strip()
    job = submit(srv, secret, steps=LONG).json()["id"]
    r = submit(srv, secret)
    assert r.status_code == 429 and solo_id in r.json()["detail"], r.text
    assert "account 'default' has no limit" in r.json()["detail"]
    cancel(srv, secret, job)

    changed = cli(srv, "keys", "limits", "--rpm", "4", key_id=key_id)
    assert "rpm 4" in changed.stderr and "max active 3" in changed.stderr, changed.stderr
    a = {"x-key": admin}
    listed = {k["id"]: k for k in httpx.get(f"{srv.base_url}/v1/admin/keys", headers=a).json()}
    assert (listed[key_id]["rpm"], listed[key_id]["max_active"], listed[key_id]["scopes"]) == (
        4, 3, ["generate", "read"],
    )  # fmt: skip
    cleared = cli(srv, "keys", "limits", "--clear", key_id=key_id)
    assert "max active none" in cleared.stderr and "rpm none" in cleared.stderr, cleared.stderr
    missing = cli(srv, "keys", "limits", "--rpm", "1", key_id="nosuchkey", check=False)
    assert missing.returncode == 1 and "no key" in missing.stderr
    assert cli(srv, "keys", "create", "--max-active", "0", check=False).returncode == 2
    # The default account's key kept its account and generate,read (least privilege: no admin).
    assert poll_result(srv.base_url, job, headers={"x-key": secret}, timeout=120)["status"] in ENDED
    assert httpx.get(f"{srv.base_url}/v1/admin/keys", headers={"x-key": secret}).status_code == 403


def test_an_older_sqlite_database_gains_the_key_limit_columns(tmp_path: Path) -> None:
    from fluxserve.settings import Settings
    from fluxserve.system import open_account_store

    settings = Settings.load(None, data_dir=tmp_path)
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.db_path) as conn:  # the table as the first accounts release made it
        conn.execute(
            "CREATE TABLE account_keys (key_id TEXT PRIMARY KEY, account TEXT NOT NULL, scopes TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO account_keys VALUES ('old', 'default', 'read')")
    store = open_account_store(settings)
    assert store.grant_of("old").max_active is None
    assert store.set_key_limits("old", 2, None).max_active == 2
    assert store.grant_of("old").scopes == ("read",)
    store.close()


def test_two_api_nodes_share_key_limits_on_postgres(
    make_server, postgres_server: PostgresServer, slow_checkpoint: Path
) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.new_database()
    a = make_server(start=False, database_url=url, default_checkpoint=str(slow_checkpoint))
    assert "applied migration(s)" in cli(a, "db", "upgrade").stderr
    cli(a, "accounts", "create", "team")
    admin = cli(a, "keys", "create", "--account", "team", "--scope", "admin,generate,read").stdout.strip()
    a.start()
    b = make_server(database_url=url, default_checkpoint=str(slow_checkpoint), run_worker="false")
    nodes = (a, b)

    # Requests per minute: one window per key in the database, whatever node is asked, also
    # under concurrent requests (exactly the limit gets through).
    limited = new_key(a, admin, "team", rpm=5)
    h = {"x-key": limited["secret"]}
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda i: httpx.get(f"{nodes[i % 2].base_url}/v1/models", headers=h).status_code, range(16)
            )
        )
    assert sorted(codes) == [200] * 5 + [429] * 11, codes
    for node in nodes:
        r = httpx.get(f"{node.base_url}/v1/credits", headers=h)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert "this key's own limit" in r.json()["detail"]

    # Active tasks: a key's job made on one node counts on the other.
    capped = new_key(b, admin, "team", max_active=1)
    key = capped["secret"]
    first = submit(a, key, steps=LONG)
    assert first.status_code == 200, first.text
    r = submit(b, key)
    assert r.status_code == 429 and capped["id"] in r.json()["detail"], r.text
    # An admin on one node lifts it; the other node sees it once its grant cache (2 s) expires.
    lifted = httpx.put(
        f"{a.base_url}/v1/admin/keys/{capped['id']}/limits", json={"max_active": 2}, headers={"x-key": admin}
    )
    assert lifted.status_code == 200 and lifted.json()["active"] == 1, lifted.text
    time.sleep(2.1)
    second = submit(b, key, steps=LONG)
    assert second.status_code == 200, second.text
    for job in (first.json()["id"], second.json()["id"]):
        cancel(a, key, job)
