"""Fair share on a real server on loopback: one account's batch does not hold another's jobs
back, and account weights are set over the admin API (the store-level order, weights and
lanes on every backend: ``tests/backends/test_contracts.py``)."""

from __future__ import annotations

import httpx
from test_accounts import cli, new_key, submit

from conftest import poll_result


def test_a_second_account_is_not_stuck_behind_a_batch(slow_server) -> None:  # type: ignore[no-untyped-def]
    srv = slow_server(start=False)
    for name in ("a", "ops"):
        cli(srv, "accounts", "create", name, "--max-active", "100")
    cli(srv, "accounts", "create", "b", "--max-active", "100", "--weight", "2")
    cli(srv, "accounts", "weight", "b", "1")
    assert cli(srv, "accounts", "weight", "nobody", "2", check=False).returncode == 1
    assert cli(srv, "accounts", "weight", "b", "0", check=False).returncode == 2  # out of range
    a, b, admin = new_key(srv, "a"), new_key(srv, "b"), new_key(srv, "ops", "admin")
    srv.start()
    batch = [submit(srv, a, steps=4, seed=i).json()["id"] for i in range(8)]
    late = [submit(srv, b, steps=4, seed=i).json()["id"] for i in range(2)]
    started = {
        job: poll_result(srv.base_url, job, headers={"x-key": key}, timeout=240)["result"]["start_time"]
        for key, jobs in ((a, batch), (b, late))
        for job in jobs
    }
    order = sorted(started, key=started.__getitem__)
    # B's jobs take turns with A's queued ones: each waits for at most one more of A's
    # (by arrival they would start after all eight).
    assert order.index(late[0]) <= order.index(batch[-1]) - 4, order
    assert order.index(late[1]) < order.index(batch[-1]), order

    h = {"x-key": admin}
    r = httpx.put(f"{srv.base_url}/v1/admin/accounts/b/weight", json={"weight": 3}, headers=h)
    assert r.status_code == 200 and r.json()["weight"] == 3, r.text
    accounts = httpx.get(f"{srv.base_url}/v1/admin/accounts", headers=h).json()
    listed = {x["name"]: x["weight"] for x in accounts}
    assert listed["a"] == 1 and listed["b"] == 3
    r = httpx.put(f"{srv.base_url}/v1/admin/accounts/b/weight", json={"weight": 0}, headers=h)
    assert r.status_code == 422 and "detail" in r.json()
    r = httpx.put(f"{srv.base_url}/v1/admin/accounts/nobody/weight", json={"weight": 2}, headers=h)
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
