"""The key life cycle through the CLI and HTTP on loopback: open on a fresh data directory,
closed for good once a key has existed (revoking the last key never opens it, also across a
restart and across API nodes), least privilege by default, and ``auth = "none"`` as the only,
explicit and loopback-only, way back to an open server."""

from __future__ import annotations

import subprocess
import sys

import httpx

from conftest import PostgresServer, Server, run_cli


def key_id(secret: str) -> str:
    return secret[4:12]  # fluxserve.keys.new_key: the id is the secret's first characters


def cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(srv.env, *args, "--data-dir", str(srv.data_dir))


def get_result(srv: Server, key: str | None) -> httpx.Response:
    headers = {"x-key": key} if key else {}
    return httpx.get(f"{srv.base_url}/v1/get_result", params={"id": "nope"}, headers=headers)


def generate_openai(srv: Server, key: str) -> httpx.Response:
    return httpx.post(
        f"{srv.base_url}/v1/images/generations",
        json={"model": "flux-kontext-pro", "prompt": "a red circle"},
        headers={"authorization": f"Bearer {key}"},
    )


def test_revoking_the_last_key_never_opens_the_server(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    assert get_result(srv, None).status_code == 200  # first run, no key ever: open on loopback

    made = cli(srv, "keys", "create", "--name", "alice")
    assert made.returncode == 0 and "scopes generate,read" in made.stderr and "admin" not in made.stderr
    alice = made.stdout.strip()
    listed = cli(srv, "keys", "list").stdout
    assert key_id(alice) in listed and "generate,read" in listed
    assert get_result(srv, alice).status_code == 200  # a valid key gets through
    # Least privilege: a key made without --scope gets 403 on every admin route.
    for method, path in [
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", f"/v1/admin/keys/{key_id(alice)}"),
        ("GET", "/v1/admin/accounts"),
        ("POST", "/v1/admin/accounts/default/topup"),
    ]:
        r = httpx.request(method, srv.base_url + path, headers={"x-key": alice}, json={})
        assert r.status_code == 403, (path, r.text)
        assert "admin" in r.json()["detail"]

    revoked = cli(srv, "keys", "revoke", key_id(alice))
    assert revoked.returncode == 0
    assert "refuses every request" in revoked.stderr and "fluxserve keys create" in revoked.stderr

    def closed() -> None:
        for key in (None, "fsk_garbage", alice):
            r = get_result(srv, key)
            assert r.status_code == 401 and isinstance(r.json()["detail"], str), (key, r.text)
        assert "revoked" in get_result(srv, alice).json()["detail"]
        for key in ("fsk_garbage", alice):
            r = generate_openai(srv, key)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "revoked" in generate_openai(srv, alice).json()["error"]["message"]

    closed()
    srv.stop()
    srv.start()  # a restart after the last revoke: still closed
    closed()
    # A new key opens the door for its holder only.
    bob = cli(srv, "keys", "create", "--name", "bob").stdout.strip()
    assert get_result(srv, bob).status_code == 200 and get_result(srv, None).status_code == 401


def test_an_admin_cannot_revoke_the_last_admin_key_over_http(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    admin = cli(srv, "keys", "create", "--name", "ops", "--scope", "generate,read,admin").stdout.strip()
    h = {"x-key": admin}
    r = httpx.delete(f"{srv.base_url}/v1/admin/keys/{key_id(admin)}", headers=h)
    assert r.status_code == 409 and "last active admin key" in r.json()["detail"]
    # POST /v1/admin/keys gives generate,read unless scopes name more.
    user = httpx.post(
        f"{srv.base_url}/v1/admin/keys", json={"name": "u", "account": "default"}, headers=h
    ).json()
    assert user["scopes"] == ["generate", "read"]
    listed = {k["id"]: k["scopes"] for k in httpx.get(f"{srv.base_url}/v1/admin/keys", headers=h).json()}
    assert listed[user["id"]] == ["generate", "read"] and "admin" in listed[key_id(admin)]
    assert httpx.delete(f"{srv.base_url}/v1/admin/keys/{user['id']}", headers=h).status_code == 204
    second = httpx.post(
        f"{srv.base_url}/v1/admin/keys",
        json={"name": "ops2", "account": "default", "scopes": ["generate", "read", "admin"]},
        headers=h,
    ).json()
    # With another admin key active, the first may go.
    assert httpx.delete(f"{srv.base_url}/v1/admin/keys/{key_id(admin)}", headers=h).status_code == 204
    assert get_result(srv, admin).status_code == 401
    assert get_result(srv, second["secret"]).status_code == 200
    # The CLI on the server's own database stays the way back in: it may revoke the last admin.
    assert cli(srv, "keys", "revoke", second["id"]).returncode == 0
    assert get_result(srv, second["secret"]).status_code == 401


def test_no_auth_is_explicit_loopback_only_and_logged(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False)
    cli(srv, "keys", "create")
    for extra_env, flags in (({}, ["--no-auth"]), ({"FLUXSERVE_AUTH": "none"}, [])):
        # Refused before anything binds, so nothing listens beyond loopback even if it failed.
        refused = subprocess.run(
            [sys.executable, "-m", "fluxserve", "serve", "--host", "0.0.0.0", "--port", str(srv.port)]
            + ["--data-dir", str(srv.data_dir), *flags],
            env={**srv.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2 and 'auth = "none"' in refused.stderr and "127.0.0.1" in refused.stderr

    opened = make_server(data_dir=srv.data_dir, auth="none")
    assert (
        get_result(opened, None).status_code == 200 and get_result(opened, "fsk_garbage").status_code == 200
    )
    assert any("key checks are OFF" in line for line in opened.output), opened.output


def test_a_revoke_on_one_postgres_node_closes_the_other_at_once(
    make_server, postgres_server: PostgresServer
) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.new_database()
    first = make_server(start=False, database_url=url)
    assert run_cli(first.env, "db", "upgrade").returncode == 0
    admin = cli(first, "keys", "create", "--scope", "generate,read,admin").stdout.strip()
    user = cli(first, "keys", "create", "--name", "user").stdout.strip()
    first.start()
    second = make_server(database_url=url)
    assert get_result(second, user).status_code == 200
    assert (
        httpx.delete(f"{first.base_url}/v1/admin/keys/{key_id(user)}", headers={"x-key": admin}).status_code
        == 204
    )
    r = get_result(second, user)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert get_result(second, admin).status_code == 200
    # The last key revoked through the CLI: both nodes stay closed.
    assert "refuses every request" in cli(first, "keys", "revoke", key_id(admin)).stderr
    for node in (first, second):
        for key in (None, "fsk_garbage", admin):
            assert get_result(node, key).status_code == 401
