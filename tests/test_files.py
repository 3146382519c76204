"""Signed, expiring result URLs; fresh URLs on re-poll; retention sweeping."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from conftest import poll_result
from fluxserve.storage import SignedUrls


def _ready(srv) -> dict:  # type: ignore[no-untyped-def,type-arg]
    r = httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "x", "seed": 1})
    return poll_result(srv.base_url, r.json()["id"])


def test_valid_tampered_and_expired_urls(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(url_ttl_s="2")
    result = _ready(srv)
    url = result["result"]["sample"]
    assert httpx.get(url).status_code == 200

    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered_sig = dict(q, sig=("0" if q["sig"][0] != "0" else "1") + q["sig"][1:])
    assert httpx.get(f"{srv.base_url}{parts.path}?{urlencode(tampered_sig)}").status_code == 403
    longer = dict(q, exp=str(int(q["exp"]) + 3600))
    assert httpx.get(f"{srv.base_url}{parts.path}?{urlencode(longer)}").status_code == 403
    other_file = parts.path.replace("/0.png", "/1.png")
    assert httpx.get(f"{srv.base_url}{other_file}?{parts.query}").status_code == 403
    assert httpx.get(f"{srv.base_url}{parts.path}").status_code == 403

    time.sleep(3.1)
    r = httpx.get(url)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    # Polling again while the result is retained gives a fresh, working URL.
    again = poll_result(srv.base_url, result["id"])
    assert again["result"]["sample"] != url
    assert httpx.get(again["result"]["sample"]).status_code == 200


def test_expired_results_are_swept(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(retention_s="1", sweep_interval_s="0.3")
    result = _ready(srv)
    job_dir = srv.data_dir / "files" / "results" / result["id"]
    assert job_dir.is_dir()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and job_dir.exists():
        time.sleep(0.1)
    assert not job_dir.exists()
    r = httpx.get(f"{srv.base_url}/v1/get_result", params={"id": result["id"]})
    assert r.json()["status"] == "Task not found"


def test_signature_checks_unit() -> None:
    s = SignedUrls(b"k" * 32, ttl_s=10)
    q = parse_qs(s.query("results/a/0.png", now=1000))
    exp, sig = q["exp"][0], q["sig"][0]
    assert s.verify("results/a/0.png", exp, sig, now=1005) == "ok"
    assert s.verify("results/a/0.png", exp, sig, now=1011) == "expired"
    assert s.verify("results/b/0.png", exp, sig, now=1005) == "invalid"
    assert SignedUrls(b"x" * 32, 10).verify("results/a/0.png", exp, sig, now=1005) == "invalid"
    assert s.verify("results/a/0.png", None, sig) == "invalid"
