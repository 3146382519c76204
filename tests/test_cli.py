"""The command line: keys, the loopback rule, settings files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxserve.settings import Settings


def fluxserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxserve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_keys_create_list_revoke_store_only_hashes(tmp_path: Path) -> None:
    created = fluxserve("keys", "create", "--name", "alice", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fsk_") and len(secret) > 30
    assert secret.encode() not in (tmp_path / "fluxserve.sqlite3").read_bytes()
    listed = fluxserve("keys", "list", "--data-dir", str(tmp_path))
    key_id = secret[4:12]
    assert "alice" in listed.stdout and key_id in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout
    assert fluxserve("keys", "revoke", key_id, "--data-dir", str(tmp_path)).returncode == 0
    assert "revoked" in fluxserve("keys", "list", "--data-dir", str(tmp_path)).stdout
    again = fluxserve("keys", "revoke", key_id, "--data-dir", str(tmp_path))
    assert again.returncode == 1 and "no active key" in again.stderr


def test_serve_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    out = fluxserve("serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert "fluxserve keys create" in out.stderr


def test_settings_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "fluxserve.toml"
    cfg.write_text(
        "port = 9001\nurl_ttl_s = 30\n[models.flux-dev]\nsteps = 12\nprice = 0.5\n"
        '[models.my-model]\nfamily = "pro"\ncheckpoint = "/ckpt"\n'
    )
    s = Settings.load(
        cfg,
        environ={"FLUXSERVE_URL_TTL_S": "45", "FLUXSERVE_ALLOW_PRIVATE_URLS": "1"},
        port=None,
        host="::1",
    )
    assert (s.port, s.url_ttl_s, s.host, s.allow_private_urls) == (9001, 45, "::1", True)
    from fluxserve.catalog import ModelCatalog

    cat = ModelCatalog.from_settings(s)
    dev = cat.get("flux-dev")
    assert dev is not None and dev.steps == 12 and dev.price == 0.5
    mine = cat.get("my-model")
    assert mine is not None and mine.family == "pro" and mine.checkpoint == "/ckpt"
    with pytest.raises(ValueError):
        Settings.load(None, environ={"FLUXSERVE_URL_TTL_S": "-1"})


def test_bad_settings_are_reported_not_crashed(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("no_such_setting = 1\n")
    out = fluxserve("serve", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "no_such_setting" in out.stderr


def test_key_ids_never_start_with_a_dash() -> None:
    """A key id is a command-line argument (``keys revoke ID``): it must not read as an option."""
    from fluxserve.keys import new_key

    ids = [new_key()[0] for _ in range(2000)]  # about 1 in 64 would start with "-" otherwise
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 8 for i in ids) and len(set(ids)) == len(ids)
