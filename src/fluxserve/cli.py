"""The ``fluxserve`` command line."""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fluxserve.settings import Settings

app = typer.Typer(
    help="fluxserve: self-hosted FLUX behind the BFL and OpenAI Images APIs.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where jobs, results and keys live.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config, **overrides)
    except Exception as exc:
        err_console.print(f"[red]error:[/red] invalid settings: {exc}")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Start the server. Prints the base URL once it accepts requests."""
    import uvicorn

    from fluxserve.api import create_app
    from fluxserve.db import Database
    from fluxserve.keys import ApiKeyStore

    settings = _settings(config, host=host, port=port, data_dir=data_dir)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not is_loopback(settings.host):
        db = Database(settings.db_path)
        has_keys = ApiKeyStore(db).any_active()
        db.close()
        if not has_keys:
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
        )
    )
    server.run()
    if not server.started:
        sys.exit(1)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from fluxserve.db import Database
    from fluxserve.keys import ApiKeyStore

    settings = _settings(config, data_dir=data_dir)
    key, secret = ApiKeyStore(Database(settings.db_path)).create(name)
    err_console.print(f"Created key [bold]{key.id}[/bold] ({name}). Store it now: it is not shown again.")
    print(secret)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (ids and names, never the secrets)."""
    from fluxserve.db import Database
    from fluxserve.keys import ApiKeyStore

    settings = _settings(config, data_dir=data_dir)
    table = Table("id", "name", "created", "status")
    for k in ApiKeyStore(Database(settings.db_path)).list():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
        table.add_row(k.id, k.name, created, "revoked" if k.revoked_at else "active")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke a key by id; requests with it are refused from then on."""
    from fluxserve.db import Database
    from fluxserve.keys import ApiKeyStore

    settings = _settings(config, data_dir=data_dir)
    if not ApiKeyStore(Database(settings.db_path)).revoke(key_id):
        err_console.print(f"[red]error:[/red] no active key with id {key_id!r} (see: fluxserve keys list)")
        raise typer.Exit(1)
    err_console.print(f"Revoked {key_id}.")


def main() -> None:
    app()
