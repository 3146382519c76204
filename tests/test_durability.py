"""Jobs survive a SIGKILL: after a restart every one finishes, exactly once."""

from __future__ import annotations

import sqlite3
import time

import httpx

from conftest import poll_result


def test_sigkill_with_jobs_queued_then_restart_completes_all_exactly_once(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    ids = []
    for i in range(10):
        r = httpx.post(
            f"{srv.base_url}/v1/flux-kontext-pro",
            json={"prompt": f"job {i}", "seed": i, "steps": 50, "aspect_ratio": "1:1"},
        )
        assert r.status_code == 200
        ids.append(r.json()["id"])
    # Wait until the worker is inside a job, then kill the server without warning.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [httpx.get(f"{srv.base_url}/v1/get_result", params={"id": i}).json() for i in ids[:2]]
        if any(s["status"] == "Ready" or s["progress"] > 0 for s in statuses):
            break
        time.sleep(0.02)
    srv.kill()
    con = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    pending_at_kill = con.execute(
        "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
    ).fetchone()[0]
    con.close()
    assert pending_at_kill >= 5, "the test needs jobs still pending when the server dies"

    srv.port = srv.port  # same address, same data directory
    srv.start()
    for job_id in ids:
        result = poll_result(srv.base_url, job_id, timeout=120)
        assert result["status"] == "Ready", result
        assert httpx.get(result["result"]["sample"]).status_code == 200

    con = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    rows = con.execute("SELECT id, completions FROM jobs").fetchall()
    con.close()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == 1 for r in rows), rows
