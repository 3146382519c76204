"""The PostgreSQL backend through the live server: the schema is applied by a command and
checked at start; jobs, keys and webhooks then live in the shared database."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from conftest import PostgresServer, poll_result


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxserve", *args], capture_output=True, text=True, env=env)


def test_schema_upgrade_then_two_servers_share_jobs_and_keys(
    make_server, postgres_server: PostgresServer
) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.new_database()
    first = make_server(start=False, database_url=url)
    # Never migrated: the server refuses to start and says which command to run.
    with pytest.raises(RuntimeError, match="fluxserve db upgrade"):
        first.start(timeout=60)
    upgraded = cli(first.env, "db", "upgrade")
    assert upgraded.returncode == 0 and "applied migration(s) 1" in upgraded.stderr
    assert "nothing to do" in cli(first.env, "db", "upgrade").stderr
    key = cli(first.env, "keys", "create", "--name", "shared").stdout.strip()
    assert key.startswith("fsk_")
    first.start()
    second = make_server(database_url=url)  # another node, another data directory, same database
    r = httpx.post(
        f"{first.base_url}/v1/flux-kontext-pro",
        json={"prompt": "a red circle", "seed": 5},
        headers={"x-key": key},
    )
    job_id = r.json()["id"]
    # Either node answers for the job: it lives in the database, not in the node.
    assert poll_result(first.base_url, job_id, headers={"x-key": key})["status"] == "Ready"
    seen = httpx.get(f"{second.base_url}/v1/get_result", params={"id": job_id}, headers={"x-key": key}).json()
    assert seen["status"] == "Ready" and seen["result"]["seed"] == 5
    assert httpx.get(f"{second.base_url}/v1/get_result", params={"id": job_id}).status_code == 401


def test_db_upgrade_without_a_database_url_says_so(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False)
    result = cli(srv.env, "db", "upgrade")
    assert result.returncode == 2 and "no database_url" in result.stderr
