"""What the command groups share: the consoles, the ``--data-dir`` and ``--config`` options,
settings loading, and :func:`server_imports`, which turns a missing server install into a
message saying how to install it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

# The client commands run with the base install (httpx, Pillow, typer, rich); the server
# commands import the server inside their functions, under server_imports().
if TYPE_CHECKING:
    from fluxserve.settings import Settings

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where jobs, results and keys live.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


@contextlib.contextmanager
def server_imports() -> Iterator[None]:
    """Wrap a server command's imports: without the ``server`` extra, say how to install it
    instead of a traceback (``\\[`` keeps rich from reading ``[server]`` as markup)."""
    try:
        yield
    except ImportError as exc:
        missing = exc.name or str(exc)
        err_console.print(
            f"[red]error:[/red] this command needs the fluxserve server, which is not installed "
            f"(missing module: {missing}).\nInstall it with:\n\n    pip install 'fluxserve\\[server]'\n"
        )
        raise typer.Exit(2) from exc


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings from ``config`` and the environment with the command's options on top;
    invalid settings end the command with exit status 2."""
    with server_imports():
        from fluxserve.settings import Settings
    try:
        return Settings.load(config, **overrides)
    except Exception as exc:
        err_console.print(f"[red]error:[/red] invalid settings: {exc}")
        raise typer.Exit(2) from exc
