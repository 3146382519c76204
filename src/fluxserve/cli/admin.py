"""The administration commands: ``keys``, ``accounts`` and ``usage``, on the server's database."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fluxserve.cli.options import ConfigFile, DataDir, console, err_console, load_settings, server_imports

if TYPE_CHECKING:
    from fluxserve.settings import Settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
WEIGHT_HELP = "Fair-share weight: 2 gets two images for every one of an account of weight 1."
accounts_app = typer.Typer(help="Accounts: credits, limits and the keys they own.", no_args_is_help=True)

KeyMaxActive = Annotated[
    int | None,
    typer.Option(
        "--max-active",
        help="The key's own active-task limit (on top of its account's).",
        min=1,
        max=1_000_000_000,
    ),
]
KeyRpm = Annotated[
    int | None,
    typer.Option(
        "--rpm", help="The key's own requests per minute (on top of its account's).", min=1, max=1_000_000_000
    ),
]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    account: Annotated[
        str | None, typer.Option("--account", help="The account that owns the key (default: 'default').")
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="Comma-separated of generate,read,admin (default: generate,read)."),
    ] = None,
    max_active: KeyMaxActive = None,
    rpm: KeyRpm = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    with server_imports():
        from fluxserve.accounts import parse_scopes
        from fluxserve.accounts.models import DEFAULT_GRANT_SCOPES
        from fluxserve.backends import open_key_store
        from fluxserve.system import open_account_store

    settings = load_settings(config, data_dir=data_dir)
    try:  # least privilege: generate,read unless --scope names more (admin only when named)
        scopes = parse_scopes(scope) if scope else DEFAULT_GRANT_SCOPES
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    store = open_account_store(settings)
    if store.get_account(account or "default") is None:
        err_console.print(f"[red]error:[/red] no account named {account!r} (see: fluxserve accounts create)")
        raise typer.Exit(1)
    key, secret = open_key_store(settings).create(name)
    store.grant(key.id, account or "default", scopes, max_active, rpm)
    err_console.print(
        f"Created key [bold]{key.id}[/bold] ({name}) with scopes {','.join(scopes)}. "
        "Store it now: it is not shown again."
    )
    print(secret)


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    max_active: KeyMaxActive = None,
    rpm: KeyRpm = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the key's own limits (then apply --max-active/--rpm).")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Set a key's own limits (on top of its account's: the tighter wins); options left out
    keep their value; with no option, show them."""
    with server_imports():
        from fluxserve.backends import open_key_store

    settings, store = _account_store(data_dir, config)
    if not any(k.id == key_id for k in open_key_store(settings).list()):
        err_console.print(f"[red]error:[/red] no key with id {key_id!r} (see: fluxserve keys list)")
        raise typer.Exit(1)
    grant = store.grant_of(key_id)
    if clear or max_active is not None or rpm is not None:
        grant = store.set_key_limits(
            key_id,
            max_active if max_active is not None else (None if clear else grant.max_active),
            rpm if rpm is not None else (None if clear else grant.rpm),
        )
    account = store.get_account(grant.account)

    def show(own: int | None, of_account: int | None) -> str:
        mine = "none" if own is None else str(own)
        return f"{mine} (account {grant.account!r}: {'none' if of_account is None else of_account})"

    err_console.print(
        f"Key {key_id}: max active {show(grant.max_active, account.max_active if account else None)}, "
        f"rpm {show(grant.rpm, account.rpm if account else None)}."
    )


def _account_store(data_dir: Path | None, config: Path | None) -> tuple[Settings, Any]:
    with server_imports():
        from fluxserve.system import open_account_store

    settings = load_settings(config, data_dir=data_dir)
    if settings.backend == "memory" and not settings.database_url:
        err_console.print("[red]error:[/red] the memory backend keeps no accounts between processes")
        raise typer.Exit(2)
    return settings, open_account_store(settings)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (ids and names, never the secrets)."""
    with server_imports():
        from fluxserve.backends import open_key_store
        from fluxserve.system import open_account_store

    settings = load_settings(config, data_dir=data_dir)
    accounts = open_account_store(settings)
    table = Table("id", "name", "created", "status", "account", "scopes", "max active", "rpm")
    for k in open_key_store(settings).list():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
        grant = accounts.grant_of(k.id)
        table.add_row(
            k.id,
            k.name,
            created,
            "revoked" if k.revoked_at else "active",
            grant.account,
            ",".join(grant.scopes),
            "-" if grant.max_active is None else str(grant.max_active),
            "-" if grant.rpm is None else str(grant.rpm),
        )
    # Rows whole in a pipe too (rich assumes 80 columns there and would wrap ids and scopes).
    Console(width=None if console.is_terminal else 160).print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke a key by id; requests with it are refused from then on."""
    with server_imports():
        from fluxserve.backends import open_key_store

    settings = load_settings(config, data_dir=data_dir)
    store = open_key_store(settings)
    if not store.revoke(key_id):
        err_console.print(f"[red]error:[/red] no active key with id {key_id!r} (see: fluxserve keys list)")
        raise typer.Exit(1)
    err_console.print(f"Revoked {key_id}.")
    if not store.any_active():
        err_console.print(
            "[yellow]That was the last active key: the server now refuses every request[/yellow] "
            "(it stays closed once a key has existed) until a key is created:\n\n"
            "    fluxserve keys create --name admin --scope generate,read,admin "
            f"--data-dir {settings.data_dir}"
        )


@accounts_app.command("create")
def accounts_create(
    name: str,
    credits: Annotated[
        float | None, typer.Option("--credits", help="Initial credits in USD (default: unlimited).", min=0)
    ] = None,
    max_active: Annotated[
        int | None, typer.Option("--max-active", help="Active tasks (default: account_max_active).", min=1)
    ] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute per key.", min=1)] = None,
    weight: Annotated[float, typer.Option("--weight", help=WEIGHT_HELP, min=0.01, max=1000)] = 1.0,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an account; then give it keys with: fluxserve keys create --account NAME."""
    from fluxserve.accounts.store import AccountError

    settings, store = _account_store(data_dir, config)
    try:
        initial = None if credits is None else round(credits * 100, 4)
        store.create_account(name, initial, max_active or settings.account_max_active, rpm, weight)
    except AccountError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    err_console.print(f"Created account [bold]{name}[/bold].")


@accounts_app.command("weight")
def accounts_weight(
    name: str,
    weight: Annotated[float, typer.Argument(help=WEIGHT_HELP, min=0.01, max=1000)],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Set an account's fair-share weight (its jobs submitted from now on follow it)."""
    from fluxserve.accounts.store import AccountError

    _, store = _account_store(data_dir, config)
    try:
        store.set_weight(name, weight)
    except AccountError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    err_console.print(f"Account [bold]{name}[/bold] has weight {weight:g}.")


@accounts_app.command("overflow-cap")
def accounts_overflow_cap(
    name: str,
    credits: Annotated[
        str, typer.Argument(help="Credits a day overflow may send to upstreams, or 'none' for no cap.")
    ],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Cap what the account's jobs may send to upstreams by overflow routing, a day (UTC)."""
    from fluxserve.accounts.store import AccountError

    _, store = _account_store(data_dir, config)
    try:
        cap = None if credits.strip().lower() == "none" else float(credits)
        store.set_overflow_cap(name, cap)
    except (AccountError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    shown = "no cap" if cap is None else f"{cap:g} credits a day"
    err_console.print(f"Account [bold]{name}[/bold]: overflow to upstreams {shown}.")


@accounts_app.command("topup")
def accounts_topup(
    name: str,
    usd: Annotated[float, typer.Argument(help="USD to add (the bonus rule applies).", min=0.01)],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add credits to an account (1 USD = 100 credits), plus the top-up bonus."""
    from fluxserve.accounts import BonusRule
    from fluxserve.accounts.store import AccountError

    settings, store = _account_store(data_dir, config)
    try:
        rule = BonusRule(settings.topup_bonus_min_usd, settings.topup_bonus_percent)
        added, bonus = store.topup(name, usd, rule)
    except AccountError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    account = store.get_account(name)
    extra = f" + {bonus:g} bonus" if bonus else ""
    err_console.print(f"Added {added:g} credits{extra} to {name}: balance {account.balance:g} credits.")


@accounts_app.command("list")
def accounts_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Accounts with their balance, limits, active tasks and keys."""
    with server_imports():
        from fluxserve.accounts import DEFAULT_ACCOUNT
        from fluxserve.backends import open_key_store

    settings, store = _account_store(data_dir, config)
    keys = open_key_store(settings).list()
    granted = {k: a.name for a in store.list_accounts() for k in store.keys_of(a.name)}
    table = Table("account", "credits", "usd", "max active", "rpm", "weight", "active", "keys")
    for a in store.list_accounts():
        mine = [
            f"{k.id} ({','.join(store.grant_of(k.id).scopes)}{', revoked' if k.revoked_at else ''})"
            for k in keys
            if granted.get(k.id, DEFAULT_ACCOUNT) == a.name
        ]
        table.add_row(
            a.name,
            "unlimited" if a.balance is None else f"{a.balance:g}",
            "" if a.balance is None else f"{a.balance / 100:.2f}",
            "-" if a.max_active is None else str(a.max_active),
            "-" if a.rpm is None else str(a.rpm),
            f"{a.weight:g}",
            str(store.active(a.name)),
            "\n".join(mine),
        )
    console.print(table)


def usage(
    from_: Annotated[str | None, typer.Option("--from", help="Start: ISO date/time or unix seconds.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="End (exclusive).")] = None,
    group_by: Annotated[str, typer.Option("--group-by", help="model, key, day or served_by.")] = "model",
    account: Annotated[str | None, typer.Option("--account", help="One account (default: all).")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Charged jobs and their cost, grouped by model, key, day or served_by (reads the database)."""
    from fluxserve.accounts.usage import parse_time, to_csv
    from fluxserve.accounts.usage import usage as usage_rows

    if group_by not in ("model", "key", "day", "served_by"):
        err_console.print("[red]error:[/red] --group-by is model, key, day or served_by")
        raise typer.Exit(2)
    _, store = _account_store(data_dir, config)
    try:
        rows = usage_rows(store, account, parse_time(from_), parse_time(to), group_by)  # type: ignore[arg-type]
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] --from/--to: {exc}")
        raise typer.Exit(2) from exc
    if csv_out:
        sys.stdout.write(to_csv(rows, group_by))  # type: ignore[arg-type]
        return
    table = Table(group_by, "jobs", "credits", "usd")
    for r in rows:
        table.add_row(r.group, str(r.jobs), f"{r.credits:g}", f"{r.usd:.2f}")
    table.add_row(
        "total",
        str(sum(r.jobs for r in rows)),
        f"{sum(r.credits for r in rows):g}",
        f"{sum(r.usd for r in rows):.2f}",
    )
    console.print(table)
