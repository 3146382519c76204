"""Settings: defaults < TOML file < FLUXSERVE_* < explicit values; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fluxserve.settings import Settings, is_loopback_host


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "fluxserve.toml"
    config.write_text('port = 9000\nurl_ttl_s = 60\nbackend = "memory"\n[models.flux-dev]\nsteps = 12\n')
    env = {"FLUXSERVE_PORT": "9100", "FLUXSERVE_ALLOW_PRIVATE_URLS": "yes", "FLUXSERVE_MAX_QUEUED_JOBS": "5"}
    s = Settings.load(config, environ=env, port=9200, host=None)
    assert s.port == 9200  # flag beats env beats file
    assert s.url_ttl_s == 60 and s.backend == "memory" and s.models["flux-dev"].steps == 12
    assert s.allow_private_urls is True and s.max_queued_jobs == 5
    assert s.host == "127.0.0.1" and s.loopback_only


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('host = "0.0.0.0"\n')
    s = Settings.load(
        environ={"FLUXSERVE_CONFIG": str(config), "FLUXSERVE_MODELS": '{"x": {"family": "pro"}}'}
    )
    assert s.host == "0.0.0.0" and not s.loopback_only
    assert s.models["x"].family == "pro"


@pytest.mark.parametrize(
    "env",
    [{"FLUXSERVE_PORT": "http"}, {"FLUXSERVE_BACKEND": "oracle"}, {"FLUXSERVE_NOT_A_SETTING": "1"}],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    if "NOT_A_SETTING" in next(iter(env)):
        # Unknown environment variables are ignored (the environment holds many things) ...
        Settings.load(environ=env)
        # ... but an unknown key in a settings file is an error.
        with pytest.raises(ValidationError):
            Settings.model_validate({"not_a_setting": 1})
        return
    with pytest.raises(ValidationError):
        Settings.load(environ=env)


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ("localhost", "127.0.0.1", "127.8.9.1", "::1"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "example.com", "10.0.0.1"))
