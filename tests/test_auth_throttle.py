"""Guessing slowed down (issue 24, point 3): past 20 failed key checks a minute, an address gets
429 with ``Retry-After`` in each protocol's shape, before its key is checked; other addresses
(and so valid keys used from elsewhere) are never slowed. Through a real server on loopback:
with ``trusted_proxies = ["127.0.0.1"]`` only the ``X-Forwarded-For`` header tells "addresses"
apart, all traffic goes to 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError
from starlette.requests import Request

from conftest import Server, run_cli
from fluxserve.api.throttle import FailedAuthThrottle, client_address
from fluxserve.settings import Settings

LIMIT = 20


def create_key(srv: Server) -> str:
    made = run_cli(srv.env, "keys", "create", "--name", "alice", "--data-dir", str(srv.data_dir))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def bfl(srv: Server, key: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"x-key": key}
    if forwarded_for:
        headers["x-forwarded-for"] = forwarded_for
    return httpx.get(f"{srv.base_url}/v1/get_result", params={"id": "x"}, headers=headers)


def openai(srv: Server, key: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if forwarded_for:
        headers["x-forwarded-for"] = forwarded_for
    return httpx.post(
        f"{srv.base_url}/v1/images/generations",
        json={"model": "flux-kontext-pro", "prompt": "a red circle", "size": "64x64"},
        headers=headers,
    )


def retry_after(r: httpx.Response) -> int:
    value = int(r.headers["retry-after"])
    assert 1 <= value <= 60, value
    return value


def test_guessing_is_slowed_per_address_in_both_shapes(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(trusted_proxies="127.0.0.1")
    alice = create_key(srv)

    # BFL shape: 20 wrong keys are 401, the 21st is 429 {"detail": ...} with Retry-After.
    for _ in range(LIMIT):
        r = bfl(srv, "fsk_wrong", "127.0.0.2")
        assert r.status_code == 401, r.text
    r = bfl(srv, "fsk_wrong", "127.0.0.2")
    assert r.status_code == 429, r.text
    assert isinstance(r.json()["detail"], str) and "failed API key" in r.json()["detail"]
    retry_after(r)
    # Refused before its key is checked: a valid key from the blocked address waits too.
    assert bfl(srv, alice, "127.0.0.2").status_code == 429
    # A header of the client's own, left of what the trusted proxy appended, changes nothing.
    assert bfl(srv, "fsk_wrong", "127.0.0.99, 127.0.0.2").status_code == 429

    # OpenAI shape, from another address (missing keys count as well as wrong ones).
    for i in range(LIMIT):
        r = openai(srv, "" if i % 2 else "fsk_wrong", "127.0.0.3")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    r = openai(srv, "fsk_wrong", "127.0.0.3")
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and "failed API key" in error["message"]
    retry_after(r)
    assert openai(srv, "fsk_wrong", "127.0.0.2").status_code == 429  # blocked on every route

    # Valid keys from other addresses are never slowed, nor is the proxy's own address.
    assert bfl(srv, alice, "127.0.0.4").status_code == 200
    assert bfl(srv, alice).status_code == 200
    r = bfl(srv, "fsk_wrong", "127.0.0.4")
    assert r.status_code == 401  # its own count starts from nothing


def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(trusted_proxies="10.0.0.0/8")  # the peer, 127.0.0.1, is not trusted
    alice = create_key(srv)
    for i in range(LIMIT):  # a new "address" each time: all of them are 127.0.0.1's failures
        assert bfl(srv, "fsk_wrong", f"127.0.0.{i + 10}").status_code == 401
    r = bfl(srv, alice, "127.0.0.200")
    assert r.status_code == 429, r.text
    retry_after(r)
    assert openai(srv, alice, "10.0.0.1").json()["error"]["type"] == "rate_limit_error"


def test_blocked_until_the_oldest_failure_ages_out() -> None:
    now = [1000.0]
    throttle = FailedAuthThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.check("a") == 0
        throttle.record_failure("a")
        now[0] += 10
    assert throttle.check("b") == 0
    assert throttle.check("a") == 30  # the first failure (t=1000) leaves the window at t=1060
    now[0] += 29
    assert throttle.check("a") == 5  # at least a few seconds
    now[0] += 1.5
    assert throttle.check("a") == 0  # one failure aged out: one more try
    throttle.record_failure("a")
    assert throttle.check("a") > 0


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    throttle = FailedAuthThrottle(max_addresses=10_000)
    for i in range(50_000):
        address = f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        throttle.record_failure(address)
        throttle.record_failure(address)
        assert len(throttle) <= 10_000
    assert len(throttle) == 10_000
    for _ in range(100):
        throttle.record_failure("127.0.0.1")
    assert all(len(stamps) <= throttle.limit for stamps in throttle._failures.values())
    assert throttle.check("127.0.0.1") > 0


def request_from(peer: str, forwarded_for: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded_for.encode())] if forwarded_for else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 1234)})


def test_client_address() -> None:
    assert client_address(request_from("127.0.0.1", "127.0.0.5"), []) == "127.0.0.1"
    assert client_address(request_from("127.0.0.1", "127.0.0.5"), ["127.0.0.2"]) == "127.0.0.1"
    assert client_address(request_from("127.0.0.1", "127.0.0.5"), ["127.0.0.0/8"]) == "127.0.0.5"
    assert client_address(request_from("127.0.0.1", "127.0.0.9, 127.0.0.5"), ["127.0.0.1"]) == "127.0.0.5"
    # Through two trusted proxies: the nearest untrusted hop.
    assert client_address(request_from("127.0.0.1", "127.0.0.7, 127.0.0.2"), ["127.0.0.1", "127.0.0.2"]) == (
        "127.0.0.7"
    )
    assert client_address(request_from("127.0.0.1"), ["127.0.0.1"]) == "127.0.0.1"


def test_trusted_proxies_setting() -> None:
    settings = Settings.load(environ={"FLUXSERVE_TRUSTED_PROXIES": "127.0.0.1, 127.0.0.0/8,::1"})
    assert settings.trusted_proxies == ["127.0.0.1/32", "127.0.0.0/8", "::1/128"]
    assert Settings().trusted_proxies == []
    with pytest.raises(ValidationError, match="trusted_proxies entry 'proxy.local'"):
        Settings(trusted_proxies=["proxy.local"])
