"""The ``fluxserve`` command line."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

# The client commands run with the base install (httpx, Pillow, typer, rich); the server
# commands import the server inside their functions, under server_imports().
if TYPE_CHECKING:
    from fluxserve.settings import Settings

app = typer.Typer(
    help="fluxserve: self-hosted FLUX behind the BFL and OpenAI Images APIs.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The PostgreSQL database (database_url).", no_args_is_help=True)
app.add_typer(db_app, name="db")
accounts_app = typer.Typer(help="Accounts: credits, limits and the keys they own.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where jobs, results and keys live.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
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


def _settings(config: Path | None, **overrides: Any) -> Settings:
    with server_imports():
        from fluxserve.settings import Settings
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

        from fluxserve.api import create_app
        from fluxserve.backends import open_key_store

    settings = _settings(
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


@app.command()
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

    settings = _settings(config, gpus=gpus, worker_models=models, data_dir=data_dir)
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

    settings = _settings(config)
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

    settings = _settings(config, data_dir=data_dir)
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

    settings = _settings(config, data_dir=data_dir)
    if settings.backend == "memory" and not settings.database_url:
        err_console.print("[red]error:[/red] the memory backend keeps no accounts between processes")
        raise typer.Exit(2)
    return settings, open_account_store(settings)


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
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an account; then give it keys with: fluxserve keys create --account NAME."""
    from fluxserve.accounts.store import AccountError

    settings, store = _account_store(data_dir, config)
    try:
        initial = None if credits is None else round(credits * 100, 4)
        store.create_account(name, initial, max_active or settings.account_max_active, rpm)
    except AccountError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    err_console.print(f"Created account [bold]{name}[/bold].")


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
    table = Table("account", "credits", "usd", "max active", "rpm", "active", "keys")
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
            str(store.active(a.name)),
            "\n".join(mine),
        )
    console.print(table)


@app.command()
def usage(
    from_: Annotated[str | None, typer.Option("--from", help="Start: ISO date/time or unix seconds.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="End (exclusive).")] = None,
    group_by: Annotated[str, typer.Option("--group-by", help="model, key or day.")] = "model",
    account: Annotated[str | None, typer.Option("--account", help="One account (default: all).")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Charged jobs and their cost, grouped by model, key or day (reads the server's database)."""
    from fluxserve.accounts.usage import parse_time, to_csv
    from fluxserve.accounts.usage import usage as usage_rows

    if group_by not in ("model", "key", "day"):
        err_console.print("[red]error:[/red] --group-by is model, key or day")
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


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (ids and names, never the secrets)."""
    with server_imports():
        from fluxserve.backends import open_key_store
        from fluxserve.system import open_account_store

    settings = _settings(config, data_dir=data_dir)
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

    settings = _settings(config, data_dir=data_dir)
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


# ---------------------------------------------------------------- client commands

BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="Server URL (env FLUXSERVE_BASE_URL, default http://127.0.0.1:8000)."),
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", help="API key (env FLUXSERVE_API_KEY, else BFL_API_KEY).")
]
Protocol = Annotated[str, typer.Option("--protocol", help="bfl (default) or openai.")]


def _client(base_url: str | None, api_key: str | None, protocol: str):  # type: ignore[no-untyped-def]
    from fluxserve.client import FluxClient

    if protocol not in ("bfl", "openai"):
        err_console.print("[red]error:[/red] --protocol must be 'bfl' or 'openai'")
        raise typer.Exit(2)
    return FluxClient(base_url, api_key, protocol=protocol)  # type: ignore[arg-type]


def _fail(exc: Exception) -> typer.Exit:
    from fluxserve.client import AuthError, ModeratedError, ValidationError

    hint = ""
    if isinstance(exc, AuthError):
        hint = " (pass --api-key or set FLUXSERVE_API_KEY)"
    elif isinstance(exc, ModeratedError):
        hint = " (rephrase the prompt, or raise safety_tolerance if the server allows)"
    elif isinstance(exc, ValidationError):
        hint = " (fix the request and try again)"
    err_console.print(f"[red]error:[/red] {exc}{hint}")
    return typer.Exit(1)


@app.command()
def generate(
    prompt: str,
    model: Annotated[str, typer.Option(help="Model id.")] = "flux-kontext-pro",
    aspect_ratio: Annotated[str | None, typer.Option("--aspect-ratio", help="e.g. 16:9")] = None,
    width: Annotated[int | None, typer.Option(help="Width (models that take it).")] = None,
    height: Annotated[int | None, typer.Option(help="Height (models that take it).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (drawn by the server if omitted).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="jpeg, png or webp.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="Input image path or URL (up to 4; 8 for FLUX.2 pro/max/flex)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    upsample: Annotated[bool, typer.Option("--upsample", help="Prompt upsampling.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to save the image.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    protocol: Protocol = "bfl",
) -> None:
    """Generate one image (or edit, with --image) and save it at once."""
    from fluxserve.client import FluxError

    with _client(base_url, api_key, protocol) as flux:
        try:
            with err_console.status(f"generating with {model} on {flux.base_url} ..."):
                res = flux.generate(
                    prompt,
                    model,
                    aspect_ratio=aspect_ratio,
                    width=width,
                    height=height,
                    seed=seed,
                    output_format=fmt,
                    input_images=image or None,
                    steps=steps,
                    prompt_upsampling=upsample or None,
                )
        except FluxError as exc:
            raise _fail(exc) from exc
    path = res.save(output or Path(f"{_slug(prompt)}-{res.seed if res.seed is not None else 'x'}"))
    console.print(f"saved [bold]{path}[/bold]  seed={res.seed}  {res.timings.get('total_s', 0):.2f}s")
    if res.prompt != prompt:
        console.print(f"prompt used: {res.prompt}")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


@app.command()
def batch(
    file: Annotated[Path, typer.Argument(help="Prompts: .txt (one a line), .csv (header row) or .jsonl.")],
    concurrency: Annotated[int, typer.Option(help="Jobs in flight at once.")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Output directory (holds manifest.jsonl).")] = Path(
        "fluxserve-batch"
    ),
    model: Annotated[str | None, typer.Option(help="Model for items that name none.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    protocol: Protocol = "bfl",
) -> None:
    """Run a batch with a live progress bar; re-running skips what the manifest has done."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fluxserve.client import BatchProgress, load_batch_file

    try:
        items = load_batch_file(file)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] cannot read {file}: {exc}")
        raise typer.Exit(2) from exc
    if model:
        items = [{"model": model, **i} for i in items]
    columns = (
        TextColumn("[bold]batch"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn(
            "[green]done {task.fields[done]}[/] [red]failed {task.fields[failed]}[/] "
            "[cyan]running {task.fields[running]}[/] skipped {task.fields[skipped]}"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with _client(base_url, api_key, protocol) as flux, Progress(*columns, console=err_console) as bar:
        task = bar.add_task("batch", total=len(items), done=0, failed=0, running=0, skipped=0)

        def on_progress(p: BatchProgress) -> None:
            bar.update(
                task, completed=p.finished, done=p.done, failed=p.failed, running=p.running, skipped=p.skipped
            )

        report = flux.batch(items, concurrency=concurrency, out_dir=out, on_progress=on_progress)
    table = Table("#", "status", "file", "seed", "seconds", "error", title=f"batch {file.name}")
    for r in report.items:
        colour = {"done": "green", "failed": "red", "skipped": "dim"}[r.status]
        table.add_row(
            str(r.index),
            f"[{colour}]{r.status}[/]",
            r.file or "",
            str(r.seed or ""),
            f"{r.duration:.2f}" if r.duration else "",
            (r.error or "")[:80],
        )
    console.print(table)
    console.print(
        f"done {report.done}, failed {report.failed}, skipped {report.skipped}; manifest: {report.manifest}"
    )
    if report.failed:
        raise typer.Exit(1)


@app.command()
def compose(
    left: str,
    right: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the composition.")],
    gap: Annotated[int, typer.Option(help="Pixels between the images.")] = 0,
    background: Annotated[str, typer.Option(help="Gap colour (name or #rrggbb).")] = "white",
) -> None:
    """Put two images (paths or URLs) side by side, heights matched without distortion."""
    from fluxserve.client import FluxClient, FluxError

    with FluxClient() as flux:
        try:
            img = flux.compose(left, right, gap=gap, background=background)
        except FluxError as exc:
            raise _fail(exc) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    img.save(output)
    console.print(f"saved [bold]{output}[/bold] ({img.width}x{img.height})")


@app.command("pair-edit")
def pair_edit(
    left: str,
    right: str,
    prompt: Annotated[str, typer.Option("--prompt", help="The edit instruction.")],
    model: Annotated[str, typer.Option(help="A Kontext model.")] = "flux-kontext-pro",
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to save.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    protocol: Protocol = "bfl",
) -> None:
    """Compose two images side by side, then edit the result with a Kontext model."""
    from fluxserve.client import FluxError

    with _client(base_url, api_key, protocol) as flux:
        try:
            with err_console.status("composing and editing ..."):
                res = flux.pair_edit(left, right, prompt, model=model, seed=seed)
        except FluxError as exc:
            raise _fail(exc) from exc
    path = res.save(output or Path(f"{_slug(prompt)}-{res.seed}"))
    console.print(f"saved [bold]{path}[/bold]  seed={res.seed}")


@app.command()
def cost(
    model: Annotated[str, typer.Option(help="Model id.")] = "flux-kontext-pro",
    n: Annotated[int, typer.Option("-n", help="Number of images.")] = 1,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Estimate what n images cost (the server's prices if it publishes them, else defaults)."""
    from fluxserve.client import FluxError

    with _client(base_url, api_key, "bfl") as flux:
        try:
            est = flux.estimate_cost(model, n)
        except FluxError as exc:
            raise _fail(exc) from exc
    table = Table("model", "count", "unit price", "total", "prices from")
    table.add_row(est.model, str(est.count), f"${est.unit_price:.4f}", f"${est.total:.2f}", est.source)
    console.print(table)


@app.command()
def credits(base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show the key's credit balance (GET /v1/credits; 1 credit = 0.01 USD)."""
    from fluxserve.client import FluxError

    with _client(base_url, api_key, "bfl") as flux:
        try:
            balance = flux.credits()
        except FluxError as exc:
            raise _fail(exc) from exc
    if balance.unlimited:
        console.print("credits: unlimited (the server does no credit accounting)")
    else:
        console.print(f"credits: {balance.credits:g} (${balance.usd:,.2f})")


models_app = typer.Typer(help="Fetch model checkpoints ahead of time.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull(
    target: Annotated[str, typer.Argument(help="A model id from the settings, or a hub repo id.")],
    config: ConfigFile = None,
) -> None:
    """Download a model's checkpoint (and its base) into the hub cache, with progress; resumable."""
    with server_imports():
        from fluxserve.catalog import ModelCatalog
        from fluxserve.engines.sources import pull_checkpoint

    entry = ModelCatalog.from_settings(_settings(config)).get(target)
    try:
        paths = pull_checkpoint(entry.checkpoint, entry.base) if entry else pull_checkpoint(target, None)
    except Exception as exc:
        err_console.print(f"[red]error:[/red] could not pull {target!r}: {exc}")
        raise typer.Exit(1) from exc
    for path in paths:
        console.print(f"ready: {path}")


def main() -> None:
    """The ``fluxserve`` console script."""
    app()
