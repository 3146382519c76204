"""The ``fluxserve`` command line, one module per audience: :mod:`~fluxserve.cli.serving`
(running the server), :mod:`~fluxserve.cli.admin` (keys, accounts, usage),
:mod:`~fluxserve.cli.client` (the API client, which runs without the server installed) and
:mod:`~fluxserve.cli.options` (what they share). This module assembles them into one app;
the order here is the order ``fluxserve --help`` lists them in."""

from __future__ import annotations

import typer

from fluxserve.cli import admin, client, serving

__all__ = ["app", "main"]

app = typer.Typer(
    help="fluxserve: self-hosted FLUX behind the BFL and OpenAI Images APIs.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(serving.serve)
app.command()(serving.worker)
app.command()(admin.usage)
app.command()(client.generate)
app.command()(client.batch)
app.command()(client.compose)
app.command("pair-edit")(client.pair_edit)
app.command()(client.cost)
app.command()(client.credits)
app.add_typer(admin.keys_app, name="keys")
app.add_typer(serving.db_app, name="db")
app.add_typer(admin.accounts_app, name="accounts")
app.add_typer(serving.models_app, name="models")


def main() -> None:
    """The ``fluxserve`` console script."""
    app()
