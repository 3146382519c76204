"""The SDK and the client CLI install on their own: a fresh virtualenv, ``pip install <repo>``
without extras, and no torch, FastAPI or server module in sight.

The install is real (pip resolves the base dependencies from the configured index); pip's
cache lives under the pytest cache so that a second run downloads nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _copy_project(dest: Path) -> Path:
    """The project as pip sees it (pyproject, README, src/), copied so that the in-tree build
    writes nothing into the working tree."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    return dest


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A fresh venv with ``pip install <repo>`` (base dependencies only); its python."""
    root = tmp_path_factory.mktemp("sdk-install")
    project = _copy_project(root / "project")
    venv = root / "venv"
    # No pip of its own: the test's pip installs into it (pip --python), which is faster.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    pip_cache = cache.mkdir("sdk-install-pip-cache") if cache else root / "pip-cache"
    env = dict(os.environ, PIP_CACHE_DIR=str(pip_cache))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["-c", str(REPO / "constraints.txt"), str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return python


def _run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing from the test's own venv may leak in (PYTHONPATH above all).
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=180)


def test_the_sdk_installs_and_imports_without_the_server(sdk_venv: Path) -> None:
    # The server's dependencies are not there ...
    for module in ("torch", "fastapi", "diffusers", "uvicorn", "transformers"):
        out = _run(sdk_venv, "-c", f"import {module}")
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, module
    # ... and the SDK imports from the installed copy, not from the working tree.
    code = (
        "import fluxserve, fluxserve.client as c, sys; print(fluxserve.__file__); "
        "print(c.FluxClient.__name__, c.AsyncFluxClient.__name__, c.verify_webhook.__name__, "
        "c.FLUX2_MODELS[0]); print(sorted(m for m in sys.modules if m.startswith('fluxserve')))"
    )
    out = _run(sdk_venv, "-c", code)
    assert out.returncode == 0, out.stderr
    location, names, modules = out.stdout.splitlines()
    assert str(sdk_venv.parent.parent) in location and str(REPO) not in location
    assert names == "FluxClient AsyncFluxClient verify_webhook flux-2-pro"
    assert "fluxserve.settings" not in modules and "fluxserve.api" not in modules


def test_the_client_cli_runs_and_server_commands_say_what_to_install(sdk_venv: Path, tmp_path: Path) -> None:
    fluxserve = sdk_venv.parent / "fluxserve"
    out = _run(fluxserve, "--help")
    assert out.returncode == 0, out.stderr
    for command in ("generate", "batch", "cost", "credits", "serve", "keys"):
        assert command in out.stdout
    # (``keys`` needs only the SQLite key store, which the base install happens to have.)
    for args in (("serve",), ("models", "pull", "flux-dev")):
        out = _run(fluxserve, *args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "pip install 'fluxserve[server]'" in out.stderr and "Traceback" not in out.stderr


def test_a_client_command_from_the_sdk_venv_talks_to_a_server(sdk_venv: Path, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The server runs from the test's own (full) venv on loopback; the client from the SDK venv.
    fluxserve = sdk_venv.parent / "fluxserve"
    out = _run(
        fluxserve,
        "generate",
        "a red circle",
        "--seed",
        "7",
        "--steps",
        "2",
        "--format",
        "png",
        "--base-url",
        server.base_url,
        "-o",
        str(tmp_path / "circle.png"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with Image.open(tmp_path / "circle.png") as img:
        assert img.format == "PNG" and img.width > 0
    out = _run(fluxserve, "credits", "--base-url", server.base_url)
    assert out.returncode == 0 and "unlimited" in out.stdout, out.stdout + out.stderr
    # The SDK, used as a library from that venv.
    code = (
        "from fluxserve.client import FluxClient\n"
        f"with FluxClient({server.base_url!r}, protocol='openai') as f:\n"
        "    r = f.generate('a blue square', seed=3, steps=2)\n"
        "    print(r.output_format, len(r.image) > 100, f.credits().unlimited)\n"
    )
    out = _run(sdk_venv, "-c", code)
    assert out.returncode == 0 and out.stdout.split() == ["png", "True", "True"], out.stdout + out.stderr
