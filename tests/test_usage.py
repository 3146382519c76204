"""Usage reports and Prometheus metrics match the jobs a real server ran."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from test_accounts import cli, new_key, submit

from conftest import poll_result


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_usage_and_metrics_equal_the_jobs_run(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False, metrics_enabled="1")
    cli(srv, "accounts", "create", "team", "--credits", "50")
    cli(srv, "accounts", "create", "other", "--credits", "50")
    k1, k2 = new_key(srv, "team"), new_key(srv, "team")
    outsider = new_key(srv, "other")
    admin = new_key(srv, "team", "admin,read")
    srv.start()
    runs = [(k1, "flux-dev")] * 3 + [(k2, "flux-kontext-pro")] * 2 + [(outsider, "flux-dev")]
    costs: dict[str, float] = {}
    for key, model in runs:
        r = submit(srv, key, model)
        assert r.status_code == 200, r.text
        body = r.json()
        assert poll_result(srv.base_url, body["id"], headers={"x-key": key})["status"] == "Ready"
        costs[model] = body["cost"]
    team_total = 3 * costs["flux-dev"] + 2 * costs["flux-kontext-pro"]

    h = {"x-key": k1}
    r = httpx.get(f"{srv.base_url}/v1/usage", params={"group_by": "model"}, headers=h).json()
    assert r["account"] == "team"
    assert {i["group"]: i["jobs"] for i in r["items"]} == {"flux-dev": 3, "flux-kontext-pro": 2}
    assert r["total_jobs"] == 5 and abs(r["total_credits"] - team_total) < 1e-6
    by_key = httpx.get(f"{srv.base_url}/v1/usage", params={"group_by": "key"}, headers=h).json()
    assert sorted(i["jobs"] for i in by_key["items"]) == [2, 3]
    assert outsider[4:12] not in str(by_key)  # another account's key never shows
    day = time.strftime("%Y-%m-%d", time.gmtime())
    by_day = httpx.get(f"{srv.base_url}/v1/usage", params={"group_by": "day"}, headers=h).json()
    assert [(i["group"], i["jobs"]) for i in by_day["items"]] == [(day, 5)]
    later = httpx.get(f"{srv.base_url}/v1/usage", params={"from": str(time.time() + 60)}, headers=h).json()
    assert later["items"] == []
    csv = httpx.get(f"{srv.base_url}/v1/usage", params={"format": "csv"}, headers=h)
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "model,jobs,credits,usd"
    assert csv.text.splitlines()[1].startswith("flux-dev,3,")
    # Bad input is a 4xx; another account's usage needs the admin scope.
    assert httpx.get(f"{srv.base_url}/v1/usage", params={"from": "yesterday"}, headers=h).status_code == 422
    assert httpx.get(f"{srv.base_url}/v1/usage", params={"group_by": "x"}, headers=h).status_code == 422
    assert httpx.get(f"{srv.base_url}/v1/usage", params={"account": "other"}, headers=h).status_code == 403
    theirs = httpx.get(
        f"{srv.base_url}/v1/usage", params={"account": "other"}, headers={"x-key": admin}
    ).json()
    assert theirs["total_jobs"] == 1

    out = cli(srv, "usage", "--account", "team", "--group-by", "model", "--csv").stdout
    assert out.splitlines()[1:] == csv.text.splitlines()[1:]
    table = cli(srv, "usage", "--group-by", "day").stdout
    assert day in table and "6" in table

    assert httpx.get(f"{srv.base_url}/metrics", headers=h).status_code == 403
    m = _metrics(httpx.get(f"{srv.base_url}/metrics", headers={"x-key": admin}).text)
    assert m[("fluxserve_jobs_total", (("status", "ready"),))] == 6
    assert abs(m[("fluxserve_credits_spent_total", ())] - team_total - costs["flux-dev"]) < 1e-6
    assert m[("fluxserve_queue_depth", ())] == 0
    assert m[("fluxserve_engine_seconds_total", ())] > 0
    assert m[("fluxserve_requests_total", (("method", "POST"), ("status", "200")))] == 6


def test_metrics_are_off_by_default(server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{server.base_url}/metrics").status_code == 404
