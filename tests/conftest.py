"""Shared fixtures: a tiny FLUX checkpoint built here, and real servers on loopback ports.

Servers are started the way a user starts one (``fluxserve serve`` in a subprocess) and driven
over real HTTP. The checkpoint is built locally once per session: nothing is downloaded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fluxserve.embedded.builder import build_tiny_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-kontext", seed=0)


@pytest.fixture(scope="session")
def tiny_flux_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain (non-Kontext) FluxPipeline checkpoint, for the width/height models."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-flux", seed=1, kontext=False)


@dataclass
class Server:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "fluxserve",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        announced = False
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                self.output.append(line)
                if line.startswith("fluxserve listening on"):
                    assert line.strip().endswith(self.base_url)
                    announced = True
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.output) + self.proc.stdout.read())
            if announced:
                try:
                    if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            if not line:
                time.sleep(0.05)
        raise TimeoutError("server did not become ready:\n" + "".join(self.output))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    """Factory: ``make_server(**env_settings)`` starts a server with FLUXSERVE_* settings."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, start: bool = True, **settings: str) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        env["FLUXSERVE_DEFAULT_CHECKPOINT"] = str(tiny_checkpoint)
        env["FLUXSERVE_LOG_LEVEL"] = "warning"
        for k, v in settings.items():
            env["FLUXSERVE_" + k.upper()] = v
        server = Server(data_dir=data_dir or tmp_path_factory.mktemp("data"), env=env)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    """One plain server (no keys, loopback) shared by a test module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env["FLUXSERVE_DEFAULT_CHECKPOINT"] = str(tiny_checkpoint)
    env["FLUXSERVE_LOG_LEVEL"] = "warning"
    s = Server(data_dir=tmp_path_factory.mktemp("data"), env=env)
    s.start()
    yield s
    s.stop()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fluxserve ARGS`` with the ``FLUXSERVE_*`` settings of ``env``, run in this process through
    the CLI's own entry point (a new interpreter per call costs seconds; tests/test_cli.py runs
    the installed command)."""
    from typer.testing import CliRunner

    from fluxserve.cli import app

    settings = {k: v for k, v in env.items() if k.startswith("FLUXSERVE_")}
    result = CliRunner().invoke(app, list(args), env=settings)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def poll_result(
    base_url: str, job_id: str, headers: dict[str, str] | None = None, timeout: float = 60.0
) -> dict:  # type: ignore[type-arg]
    """Poll get_result as a BFL client does, until the job leaves Pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base_url}/v1/get_result", params={"id": job_id}, headers=headers)
        r.raise_for_status()
        body = r.json()
        if body["status"] != "Pending":
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still pending")


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint sampled at a large native area: steps take long enough to watch."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "slow", seed=2, native_area=448 * 448)


@pytest.fixture
def slow_server(make_server, slow_checkpoint):  # type: ignore[no-untyped-def]
    def make(**settings: str):  # type: ignore[no-untyped-def]
        return make_server(default_checkpoint=str(slow_checkpoint), **settings)

    return make


@dataclass
class S3Server:
    """A real S3-compatible server (nanio, which checks SigV4 signatures) on a loopback port."""

    endpoint: str
    bucket: str
    env: dict[str, str]
    """The standard AWS settings that point boto3 at it."""

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """nanio serving a temporary directory, with one bucket made for the tests."""
    port = free_port()
    creds = {"NANIO_ACCESS_KEY": "fluxserve-test", "NANIO_SECRET_KEY": "fluxserve-test-secret-key"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **creds}
    data = tmp_path_factory.mktemp("s3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanio", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data), "--no-access-log", "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "nanio did not start"
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": creds["NANIO_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["NANIO_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = S3Server(endpoint, "fluxserve-test", aws)
    server.client().create_bucket(Bucket=server.bucket)
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them off PATH, under /usr/lib/postgresql/N/bin."""
    import glob
    import shutil

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found[-1]


@dataclass
class PostgresServer:
    """A real PostgreSQL server on a loopback port, in a temporary directory."""

    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://fluxserve@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """``initdb`` + ``pg_ctl start`` (as the ``postgres`` user when running as root, since the
    server refuses to run as root), trust auth on 127.0.0.1 only."""
    import shutil
    import tempfile

    # Not under pytest's temporary root: that is private to us, and the server's user must reach it.
    root = Path(tempfile.mkdtemp(prefix="fluxserve-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "-U", "fluxserve", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off"
    subprocess.run(
        [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port)
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """``slow`` marks long tests that repeat at length what faster tests cover; the default (CI)
    run leaves them out (pyproject's addopts), ``pytest -m slow`` runs them."""
    config.addinivalue_line("markers", "slow: a long test left out of the default run (pytest -m slow)")
