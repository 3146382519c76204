"""The server's commands: ``serve``, ``worker``, ``db upgrade`` and ``models pull``."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from fluxserve.cli.options import ConfigFile, DataDir, console, err_console, load_settings, server_imports

db_app = typer.Typer(help="The PostgreSQL database (database_url).", no_args_is_help=True)
models_app = typer.Typer(help="Fetch model checkpoints ahead of time.", no_args_is_help=True)

Gpus = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="Devices, one engine worker each: 0,1 (cuda:0, cuda:1); cpu,cpu runs two on the CPU.",
    ),
]
WorkerModels = Annotated[
    str | None,
    typer.Option("--models", help="Model ids the workers take (PostgreSQL); default: all that load."),
]


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    gpus: Gpus = None,
    models: WorkerModels = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker", help="A stateless API node: no engine here; `fluxserve worker` processes generate."
        ),
    ] = False,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help='Accept every request without a key (auth = "none"); loopback only, logged.'
        ),
    ] = False,
) -> None:
    """Start the server. Prints the base URL once it accepts requests."""
    with server_imports():
        import uvicorn

        from fluxserve.backends import open_key_store
        from fluxserve.server import create_app

    settings = load_settings(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        gpus=gpus,
        worker_models=models,
        run_worker=False if no_worker else None,
        auth="none" if no_auth else None,
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.auth == "none" and not settings.loopback_only:
        err_console.print(
            f'[red]Refusing to listen on {settings.host}:[/red] auth = "none" (--no-auth, FLUXSERVE_AUTH) '
            "turns key checks off, which is allowed on 127.0.0.1 only.\nBind to 127.0.0.1, or drop "
            "--no-auth and use keys: fluxserve keys create --name me --scope generate,read,admin"
        )
        raise typer.Exit(2)
    if not settings.loopback_only and (
        settings.backend != "sqlite" or not open_key_store(settings).any_active()
    ):
        err_console.print(
            f"[red]Refusing to listen on {settings.host}:[/red] no API key exists, so anyone "
            "who can reach this address could use the server.\nCreate a key first:\n\n"
            f"    fluxserve keys create --name me --data-dir {settings.data_dir}\n\n"
            "or bind to 127.0.0.1 (the default)."
        )
        raise typer.Exit(2)

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                sock = self.servers[0].sockets[0].getsockname()
                shown = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
                if ":" in shown:
                    shown = f"[{shown}]"
                print(f"fluxserve listening on http://{shown}:{sock[1]}", flush=True)

    server = AnnouncingServer(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            # X-Forwarded-For/-Proto count only from trusted_proxies (uvicorn's default trusts
            # 127.0.0.1, which would let any local client choose its address)
            forwarded_allow_ips=settings.trusted_proxies,
        )
    )
    server.run()
    if not server.started:
        sys.exit(1)


def worker(
    gpus: Gpus = None,
    models: WorkerModels = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run engine workers without the HTTP API, one per GPU, each taking jobs of the models it
    loaded from the shared PostgreSQL database (database_url). Stops after its jobs on SIGTERM."""
    with server_imports():
        from fluxserve.system import run_worker_process

    settings = load_settings(config, gpus=gpus, worker_models=models, data_dir=data_dir)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.database_url:
        err_console.print(
            "[red]error:[/red] `fluxserve worker` takes jobs from a shared PostgreSQL database: set "
            "database_url (FLUXSERVE_DATABASE_URL). With SQLite, `fluxserve serve --gpus 0,1` runs "
            "one worker per GPU inside the server."
        )
        raise typer.Exit(2)
    sys.exit(run_worker_process(settings))


@db_app.command("upgrade")
def db_upgrade(config: ConfigFile = None) -> None:
    """Apply the schema migrations the database lacks (safe to run again, and from several
    machines at once)."""
    with server_imports():
        from fluxserve.backends.postgres import SCHEMA_VERSION, PostgresDatabase

    settings = load_settings(config)
    if not settings.database_url:
        err_console.print(
            "[red]error:[/red] no database_url is set (FLUXSERVE_DATABASE_URL or the config file); "
            "SQLite needs no upgrade command"
        )
        raise typer.Exit(2)
    db = PostgresDatabase(settings.database_url)
    try:
        applied = db.upgrade()
    finally:
        db.close()
    done = f"applied migration(s) {', '.join(map(str, applied))}" if applied else "nothing to do"
    err_console.print(f"Database schema at version {SCHEMA_VERSION}: {done}.")


@models_app.command("pull")
def models_pull(
    target: Annotated[str, typer.Argument(help="A model id from the settings, or a hub repo id.")],
    config: ConfigFile = None,
) -> None:
    """Download a model's checkpoint (and its base) into the hub cache, with progress; resumable."""
    with server_imports():
        from fluxserve.catalog import ModelCatalog
        from fluxserve.engines.sources import pull_checkpoint

    entry = ModelCatalog.from_settings(load_settings(config)).get(target)
    try:
        paths = pull_checkpoint(entry.checkpoint, entry.base) if entry else pull_checkpoint(target, None)
    except Exception as exc:
        err_console.print(f"[red]error:[/red] could not pull {target!r}: {exc}")
        raise typer.Exit(1) from exc
    for path in paths:
        console.print(f"ready: {path}")
