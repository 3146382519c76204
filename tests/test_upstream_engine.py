"""Upstream providers below the server: the settings and catalog that name them, and
``UpstreamEngine`` and ``UpstreamCall`` driven directly against the stand-in upstreams on loopback
(tests/standin_upstreams.py) or a socket that answers nothing: prices, several BFL images, the
download guard, and which requests are retried. The gateway end to end is test_upstreams.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from standin_upstreams import BFL_KEY, OPENAI_KEY, Standin, StandinServer

from conftest import free_port
from fluxserve.catalog import ModelCatalog
from fluxserve.engines import EngineRequest
from fluxserve.engines.sources import CheckpointError
from fluxserve.settings import Settings, UpstreamSettings
from fluxserve.upstreams import UpstreamEngine, UpstreamError
from fluxserve.upstreams.call import UpstreamCall


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    server = StandinServer(free_port()).start()
    yield server.standin
    server.stop()


# Units: settings, catalog, the engine's checks and the download guard.


def test_settings_read_the_key_from_the_named_environment_variable(tmp_path: Any) -> None:
    config = tmp_path / "fluxserve.toml"
    config.write_text(
        '[upstreams.bfl]\nkind = "bfl"\nbase_url = "https://api.bfl.ai"\napi_key_env = "BFL_API_KEY"\n\n'
        '[models.flux-2-max]\nupstream = "bfl"\nupstream_model = "flux-2-max"\nprice = 0.07\n'
        '[models.flux-2-pro]\nupstream = "bfl"\n'
    )
    settings = Settings.load(config, environ={"BFL_API_KEY": "sekrit"})
    assert settings.upstreams["bfl"].api_key == "sekrit"
    assert "sekrit" not in repr(settings)
    catalog = ModelCatalog.from_settings(settings)
    entry = catalog.get("flux-2-max")
    assert entry is not None and entry.checkpoint == "upstream:bfl:flux-2-max" and entry.price == 0.07
    assert entry.upstream == ("bfl", "flux-2-max")
    pro = catalog.get("flux-2-pro")
    assert pro is not None and pro.upstream == ("bfl", "flux-2-pro")  # upstream_model defaults to the id
    # Without the variable the model cannot serve, with a reason that says what to set.
    keyless = Settings.load(config, environ={})
    engine = UpstreamEngine(keyless.upstreams)
    with pytest.raises(CheckpointError, match="has no API key: set BFL_API_KEY"):
        engine.load("upstream:bfl:flux-2-max")
    UpstreamEngine(settings.upstreams).load("upstream:bfl:flux-2-max")


def test_catalog_refuses_an_unknown_upstream() -> None:
    with pytest.raises(ValueError, match="no \\[upstreams.nope\\]"):
        ModelCatalog.from_settings(Settings(models={"flux-2-max": {"upstream": "nope"}}))  # type: ignore[dict-item]


def test_result_urls_off_the_upstreams_site_go_through_the_private_address_guard() -> None:
    bfl = UpstreamCall("bfl", UpstreamSettings(kind="bfl", base_url="https://api.bfl.ai"), False, 1 << 20)
    assert bfl.trusted("https://api.us1.bfl.ai/v1/get_result?id=1")
    assert bfl.trusted("https://delivery-eu1.bfl.ai/results/x.png")
    assert not bfl.trusted("https://bfl.ai.evil.example/x.png")
    assert not bfl.trusted("http://127.0.0.1:9/x.png")
    with pytest.raises(UpstreamError, match="downloading the result failed"):
        asyncio.run(bfl.download(f"http://127.0.0.1:{free_port()}/x.png"))  # private: refused
    ip = UpstreamCall("x", UpstreamSettings(kind="openai", base_url="http://127.0.0.1:1/v1"), False, 1 << 20)
    assert not ip.trusted("http://127.0.0.2:1/x.png")


def test_upstream_engine_records_the_configured_price_when_none_is_reported(standin: Standin) -> None:
    upstream = UpstreamSettings(
        kind="openai",
        base_url=standin.base_url + "/openai/v1",
        api_key=OPENAI_KEY,
        response_format="b64_json",
    )
    engine = UpstreamEngine({"oai": upstream}, {"upstream:oai:m": 0.03})
    request = EngineRequest("upstream:oai:m", "two owls", 64, 48, 1, 1, 1.0, num_images=2)
    images = engine.generate(request)
    assert [img.size for img in images] == [(64, 48), (64, 48)]
    assert request.extras == {
        "upstream": "oai",
        "upstream_model": "m",
        "upstream_cost_usd": pytest.approx(0.06),
    }
    wrong = UpstreamSettings(kind="openai", base_url=standin.base_url + "/openai/v1", api_key="wrong")
    with pytest.raises(UpstreamError, match="refused our API key \\(HTTP 401\\)$"):
        UpstreamEngine({"oai": wrong}).generate(EngineRequest("upstream:oai:m", "x", 64, 64, 1, 1, 1.0))


def test_a_submission_cut_off_after_it_was_sent_is_not_repeated() -> None:
    """A POST whose connection dies after sending may have run at the upstream: no retry (no
    second charge there); the same failure on a GET poll is retried."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(conn.recv(65536).split(b" ", 1)[0])
            conn.close()  # read the request, answer nothing

    threading.Thread(target=serve, daemon=True).start()
    settings = UpstreamSettings(
        kind="bfl", base_url=f"http://127.0.0.1:{port}", poll_interval_s=0.01, max_retries=2
    )

    async def go(method: str) -> None:
        call = UpstreamCall("cut", settings, False, 1 << 20)
        try:
            await call.request(method, f"http://127.0.0.1:{port}/v1/flux-dev", json={})
        finally:
            await call.aclose()

    try:
        with pytest.raises(UpstreamError, match="the connection failed during POST"):
            asyncio.run(go("POST"))
        assert seen == [b"POST"]
        with pytest.raises(UpstreamError, match="unreachable .*3 attempts"):
            asyncio.run(go("GET"))
        assert seen == [b"POST", b"GET", b"GET", b"GET"]
    finally:
        listener.close()


def test_several_bfl_images_are_several_tasks_with_successive_seeds(standin: Standin) -> None:
    upstream = UpstreamSettings(kind="bfl", base_url=standin.base_url, api_key=BFL_KEY, poll_interval_s=0.05)
    request = EngineRequest("upstream:bfl:flux-2-pro", "three herons", 96, 64, 40, 1, 1.0, num_images=3)
    steps: list[tuple[int, int]] = []
    images = UpstreamEngine({"bfl": upstream}).generate(request, on_step=lambda d, t: steps.append((d, t)))
    assert [img.size for img in images] == [(96, 64)] * 3
    sent = [s for s in standin.submissions if s.get("prompt") == "three herons"]
    assert sorted(s["seed"] for s in sent) == [40, 41, 42] and {s["model"] for s in sent} == {"flux-2-pro"}
    assert len(set(request.extras["upstream_ids"])) == 3
    assert request.extras["upstream_cost_usd"] == pytest.approx(0.21)  # 3 x 7 credits
    assert steps[-1] == (100, 100)
