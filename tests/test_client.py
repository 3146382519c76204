"""The SDK and the client CLI, against a real fluxserve server and a 429 stand-in."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import fluxserve.client
from fluxserve.client import (
    AsyncFluxClient,
    FluxClient,
    ModeratedError,
    ValidationError,
    compose,
    load_batch_file,
)
from fluxserve.spec.geometry import aspect_to_size


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["bfl", "openai"])
def test_generate_both_protocols(server, tmp_path: Path, protocol: str) -> None:  # type: ignore[no-untyped-def]
    with FluxClient(server.base_url, protocol=protocol) as flux:
        res = flux.generate("a red circle", aspect_ratio="16:9", seed=42, output_format="png")
        again = flux.generate("a red circle", aspect_ratio="16:9", seed=42, output_format="png")
        drawn = flux.generate("a red circle", aspect_ratio="1:1")
    assert res.seed == 42 and res.image == again.image
    assert res.to_pil().size == aspect_to_size("16:9") and res.output_format == "png"
    assert isinstance(drawn.seed, int)
    path = res.save(tmp_path / "out")
    assert path.suffix == ".png" and path.read_bytes() == res.image
    assert res.timings["total_s"] > 0
    if protocol == "bfl":
        assert res.job_id and res.url and "server_engine_s" in res.timings


@pytest.mark.parametrize("protocol", ["bfl", "openai"])
def test_edit_and_pair_edit(server, tmp_path: Path, protocol: str) -> None:  # type: ignore[no-untyped-def]
    left = tmp_path / "left.png"
    left.write_bytes(_png((220, 30, 30), (300, 300)))
    right = Image.new("RGB", (150, 300), (30, 60, 220))
    with FluxClient(server.base_url, protocol=protocol) as flux:
        edited = flux.edit(left, "make the background blue", seed=1)
        paired = flux.pair_edit(left, right, "make them the same colour", seed=2)
        both = flux.edit([left, right], "combine", seed=3)
    assert edited.to_pil().size == (1024, 1024)
    # 300x300 + 150x300 side by side is 3:2, and the edit follows the input's shape
    assert paired.to_pil().size == aspect_to_size("3:2")
    assert both.to_pil().size == (1024, 1024)  # several inputs: the first one sets the shape


def test_typed_errors(server) -> None:  # type: ignore[no-untyped-def]
    with FluxClient(server.base_url) as flux:
        with pytest.raises(ValidationError) as v:
            flux.generate("x", aspect_ratio="9:1")
        assert "3:7" in str(v.value)
        with pytest.raises(ModeratedError) as m:
            flux.generate("a pornographic scene")
        assert m.value.kind == "request" and m.value.category == "sexual_explicit"
        assert m.value.job_id
    with FluxClient(server.base_url, protocol="openai") as flux, pytest.raises(ModeratedError):
        flux.generate("a pornographic scene")


def test_batch_saves_valid_items_records_failures_and_resumes(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    items: list = [f"a small red circle number {i}" for i in range(8)]  # type: ignore[type-arg]
    items += [
        {"prompt": "bad ratio", "aspect_ratio": "9:1"},
        {"prompt": "bad width", "model": "flux-dev", "width": 1000, "height": 768},
        {"prompt": "no such model", "model": "flux-imaginary"},
        {
            "prompt": "a blue star",
            "model": "flux-dev",
            "width": 512,
            "height": 512,
            "seed": 5,
            "name": "star",
        },
    ]
    seen = []
    with FluxClient(server.base_url) as flux:
        report = flux.batch(
            items,
            concurrency=4,
            out_dir=tmp_path / "out",
            on_progress=lambda p: seen.append((p.done, p.failed, p.running)),
        )
    assert (report.done, report.failed, report.skipped) == (9, 3, 0)
    assert max(r for _, _, r in seen) <= 4 and seen[-1][:2] == (9, 3)
    out = tmp_path / "out"
    assert (out / "star.jpg").exists()
    assert len(list(out.glob("*.png"))) == 8
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 12
    failed = {m["input"]["prompt"]: m["error"] for m in manifest if m["status"] == "failed"}
    assert set(failed) == {"bad ratio", "bad width", "no such model"}
    assert "3:7" in failed["bad ratio"] and "multiple of 32" in failed["bad width"]
    assert "flux-imaginary" in failed["no such model"] and "flux-kontext-pro" in failed["no such model"]
    done = [m for m in manifest if m["status"] == "done"]
    assert all((out / m["file"]).exists() and isinstance(m["seed"], int) for m in done)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # A re-run skips what is done (no new jobs) and tries the failed ones again.
    with FluxClient(server.base_url) as flux:
        again = flux.batch(items, concurrency=4, out_dir=out)
    assert (again.done, again.failed, again.skipped) == (0, 3, 9)
    assert all(mtimes[p.name] == p.stat().st_mtime_ns for p in out.glob("*.png"))


def test_credits_in_bfl_shape(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    # Plain HTTP: BFL's CreditsResponse (a required number), plus our "unlimited" flag.
    r = httpx.get(f"{server.base_url}/v1/credits")
    assert r.status_code == 200 and r.json() == {"credits": 1_000_000_000.0, "unlimited": True}
    # BFL's published CreditsResponse: {"credits": number}, required.
    ours = httpx.get(f"{server.base_url}/openapi.json").json()
    schema = ours["components"]["schemas"]["CreditsResponse"]
    assert "credits" in schema["required"] and schema["properties"]["credits"]["type"] == "number"
    for protocol in ("bfl", "openai"):
        with FluxClient(server.base_url, protocol=protocol) as flux:
            balance = flux.credits()
        assert balance.unlimited and balance.credits == 1e9 and balance.usd == 1e7
    out = cli("credits", "--base-url", server.base_url, cwd=tmp_path)
    assert out.returncode == 0 and "unlimited" in out.stdout


def test_flux2_reference_limits_are_checked_before_any_request() -> None:
    from fluxserve.client import FLUX2_MODELS, max_input_images

    assert max_input_images("flux-2-pro") == max_input_images("flux-2-flex") == 8
    assert max_input_images("flux-2-klein-4b") == max_input_images("flux-kontext-pro") == 4
    assert max_input_images("gpt-image-1") == 16
    assert max_input_images("my-own-model") == 16  # the server checks ids it alone knows
    assert "flux-2-max" in FLUX2_MODELS
    tiny = _png((1, 2, 3), (8, 8))
    # Nothing listens on port 9: the limit is the client's own, so no connection is tried.
    with FluxClient("http://127.0.0.1:9", max_retries=0) as flux:
        with pytest.raises(ValidationError, match="at most 8"):
            flux.generate("x", "flux-2-pro", input_images=[tiny] * 9)
        with pytest.raises(ValidationError, match="one to 4"):
            flux.edit([tiny] * 5, "x", "flux-2-klein-9b")


@pytest.mark.parametrize("protocol", ["bfl", "openai"])
def test_flux2_edit_with_six_references(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    # More references than Kontext takes: FLUX.2 pro takes eight (input_image ... _8 on BFL).
    refs = [_png((40 * i, 0, 255 - 40 * i), (96, 96)) for i in range(6)]
    with FluxClient(server.base_url, protocol=protocol) as flux:
        res = flux.edit(refs, "put them side by side", "flux-2-pro", width=256, height=256, seed=4)
        assert res.to_pil().size == (256, 256) and res.model == "flux-2-pro"
        with pytest.raises(ValidationError):  # klein takes four, checked before any request
            flux.edit(refs, "x", "flux-2-klein-4b")


def test_cost_estimates(server) -> None:  # type: ignore[no-untyped-def]
    with FluxClient(server.base_url) as flux:
        est = flux.estimate_cost("flux-kontext-pro", 100)
        assert (est.unit_price, est.total, est.source) == (0.04, 4.0, "server")
        assert flux.estimate_cost("gpt-image-1", 2).source == "server"  # the server knows more ids
    with FluxClient("http://127.0.0.1:9", prices={"flux-dev": 0.5}) as offline:
        assert offline.estimate_cost("flux-kontext-max", 10).total == pytest.approx(0.8)
        assert offline.estimate_cost("flux-kontext-max", 10).source == "default"
        assert offline.estimate_cost("flux-dev", 3).total == pytest.approx(1.5)
        with pytest.raises(ValidationError):
            offline.estimate_cost("nope", 1)


class RateLimitedBFL:
    """A stand-in for a hosted BFL API: 429 with Retry-After, then the normal flow."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []
        self.submits = 0
        self.polls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(
                self,
                code: int,
                body: bytes,
                ctype: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.log.append((time.monotonic(), "POST", self.headers.get("x-key", "")))
                outer.submits += 1
                if outer.submits == 1:
                    self._send(429, b'{"detail":"slow down"}', headers={"Retry-After": "1"})
                    return
                url = f"http://127.0.0.1:{outer.port}/v1/get_result?id=abc"
                self._send(200, json.dumps({"id": "abc", "polling_url": url}).encode())

            def do_GET(self) -> None:  # noqa: N802
                outer.log.append((time.monotonic(), "GET", self.path))
                if self.path.startswith("/v1/get_result"):
                    outer.polls += 1
                    if outer.polls == 1:
                        self._send(429, b"{}", headers={"Retry-After": "1"})
                    elif outer.polls < 4:
                        self._send(200, b'{"id":"abc","status":"Pending","progress":0.5}')
                    else:
                        sample = f"http://127.0.0.1:{outer.port}/sample.png"
                        body = {
                            "id": "abc",
                            "status": "Ready",
                            "result": {"sample": sample, "prompt": "p", "seed": 9},
                        }
                        self._send(200, json.dumps(body).encode())
                else:
                    self._send(200, _png((1, 2, 3), (8, 8)), "image/png")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_backoff_and_retry_after_against_a_stand_in() -> None:
    stub = RateLimitedBFL()

    async def run():  # type: ignore[no-untyped-def]
        async with AsyncFluxClient(f"http://127.0.0.1:{stub.port}", api_key="bfl-key") as flux:
            return await flux.generate("p", "flux-pro-1.1")

    t0 = time.monotonic()
    res = asyncio.run(run())
    elapsed = time.monotonic() - t0
    stub.httpd.shutdown()
    assert res.seed == 9 and res.job_id == "abc" and res.to_pil().size == (8, 8)
    assert elapsed >= 2.0  # two Retry-After: 1 honoured
    posts = [t for t, m, _ in stub.log if m == "POST"]
    assert len(posts) == 2 and posts[1] - posts[0] >= 0.95
    assert all(k == "bfl-key" for _, m, k in stub.log if m == "POST")
    polls = [t for t, m, p in stub.log if m == "GET" and p.startswith("/v1/get_result")]
    gaps = [b - a for a, b in zip(polls[1:], polls[2:], strict=False)]
    assert gaps == sorted(gaps)  # the polling interval grows (backoff)


def test_compose_dimensions_and_batch_files(tmp_path: Path) -> None:
    img = compose(Image.new("RGB", (200, 100)), Image.new("RGB", (100, 200)), gap=10)
    assert img.size == (400 + 10 + 100, 200)
    (tmp_path / "a.txt").write_text("# comment\na red circle\n\na blue star\n")
    assert load_batch_file(tmp_path / "a.txt") == [{"prompt": "a red circle"}, {"prompt": "a blue star"}]
    (tmp_path / "a.csv").write_text("prompt,seed,aspect_ratio\na red circle,3,16:9\n")
    assert load_batch_file(tmp_path / "a.csv") == [
        {"prompt": "a red circle", "seed": 3, "aspect_ratio": "16:9"}
    ]
    (tmp_path / "a.jsonl").write_text('{"prompt": "x", "model": "flux-dev"}\n')
    assert load_batch_file(tmp_path / "a.jsonl") == [{"prompt": "x", "model": "flux-dev"}]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxserve", *args], capture_output=True, text=True, cwd=cwd, timeout=180
    )


def test_cli_commands(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = ["--base-url", server.base_url]
    out = cli(
        "generate",
        "a red circle",
        "--aspect-ratio",
        "4:3",
        "--seed",
        "7",
        "--format",
        "jpeg",
        "-o",
        "red.jpg",
        *url,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "red.jpg").size == aspect_to_size("4:3") and "seed=7" in out.stdout
    out = cli("generate", "x", "--aspect-ratio", "9:1", *url, cwd=tmp_path)
    assert out.returncode == 1 and "3:7" in out.stderr

    Image.new("RGB", (200, 100), "red").save(tmp_path / "l.png")
    Image.new("RGB", (100, 200), "blue").save(tmp_path / "r.png")
    out = cli("compose", "l.png", "r.png", "-o", "both.png", "--gap", "4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "both.png").size == (400 + 4 + 100, 200)

    out = cli(
        "pair-edit",
        "l.png",
        "r.png",
        "--prompt",
        "make them green",
        "--seed",
        "1",
        "-o",
        "pair.png",
        "--protocol",
        "openai",
        *url,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "pair.png").size[0] > Image.open(tmp_path / "pair.png").size[1]

    (tmp_path / "jobs.jsonl").write_text(
        '{"prompt": "a red circle", "seed": 1}\n{"prompt": "bad", "aspect_ratio": "1:9"}\n'
        '{"prompt": "a green ring", "seed": 2, "output_format": "webp"}\n'
    )
    out = cli("batch", "jobs.jsonl", "--out", "b", "--concurrency", "2", *url, cwd=tmp_path)
    assert out.returncode == 1  # one item failed
    assert "done 2, failed 1" in out.stdout and "manifest" in out.stdout
    assert len(list((tmp_path / "b").glob("*.png"))) == 1 and len(list((tmp_path / "b").glob("*.webp"))) == 1

    out = cli("cost", "--model", "flux-kontext-pro", "-n", "100", *url, cwd=tmp_path)
    assert out.returncode == 0 and "$4.00" in out.stdout and "server" in out.stdout
    out = cli(
        "cost", "--model", "flux-kontext-max", "-n", "10", "--base-url", "http://127.0.0.1:9", cwd=tmp_path
    )
    assert "$0.80" in out.stdout and "default" in out.stdout


# What the SDK may import: it must install and run without the server's dependencies.
SDK_DEPENDENCIES = {"httpx", "PIL"}
SDK_OWN_MODULES = ("fluxserve.client", "fluxserve.prices")
SERVER_ONLY = ("torch", "fastapi", "starlette", "uvicorn", "diffusers", "transformers", "onnxruntime")


def _imports_of(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_sdk_source_imports_only_stdlib_httpx_pil_and_itself() -> None:
    package = Path(fluxserve.client.__file__).parent
    for path in sorted(package.glob("*.py")):
        for name in _imports_of(path.read_text()):
            top = name.split(".")[0]
            own = any(name == m or name.startswith(m + ".") for m in SDK_OWN_MODULES)
            assert own or top in SDK_DEPENDENCIES or top in sys.stdlib_module_names, (path.name, name)
    assert _imports_of((package.parent / "prices.py").read_text()) <= {"__future__", "typing"}


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_importing_the_sdk_loads_no_server_module() -> None:
    loaded = _modules_loaded_by("import fluxserve.client")
    assert not {m for m in loaded if m.split(".")[0] in SERVER_ONLY}
    ours = {m for m in loaded if m.split(".")[0] == "fluxserve"}
    # The package root imports nothing (the base install is the SDK alone): no settings, no
    # pydantic.
    allowed = {"fluxserve", "fluxserve.prices"}
    assert not {m for m in ours - allowed if not m.startswith("fluxserve.client")}
    assert "pydantic" not in loaded
    # Without the package's __init__, the SDK alone does not even need pydantic.
    stub = (
        "import sys, types; pkg = types.ModuleType('fluxserve'); "
        f"pkg.__path__ = [{str(Path(fluxserve.client.__file__).parent.parent)!r}]; "
        "sys.modules['fluxserve'] = pkg\nimport fluxserve.client"
    )
    alone = _modules_loaded_by(stub)
    assert {m for m in alone if m.startswith("fluxserve")} <= {"fluxserve", "fluxserve.prices"} | {
        m for m in alone if m.startswith("fluxserve.client")
    }
    assert not {m for m in alone if m.split(".")[0] in (*SERVER_ONLY, "pydantic")}


def test_client_cli_loads_no_server_module() -> None:
    # The CLI module and its client commands' imports; the server commands import lazily.
    loaded = _modules_loaded_by("import fluxserve.cli, fluxserve.client, fluxserve.client.webhooks")
    assert not {m for m in loaded if m.split(".")[0] in (*SERVER_ONLY, "pydantic")}
    ours = {m for m in loaded if m.split(".")[0] == "fluxserve"}
    cli = {m for m in ours if m == "fluxserve.cli" or m.startswith("fluxserve.cli.")}  # the cli/ package
    assert ours - cli - {"fluxserve", "fluxserve.prices"} <= {
        m for m in ours if m.startswith("fluxserve.client")
    }


def test_server_and_sdk_share_stitching_and_prices() -> None:
    from fluxserve.client.composition import stitch_horizontally
    from fluxserve.images import stitch_horizontally as engine_stitch
    from fluxserve.prices import LIST_PRICES_USD

    assert engine_stitch is stitch_horizontally
    assert fluxserve.client.DEFAULT_PRICES is LIST_PRICES_USD
    for model, price in {"flux-kontext-pro": 0.04, "flux-kontext-max": 0.08, "flux-dev": 0.025}.items():
        assert LIST_PRICES_USD[model] == price
