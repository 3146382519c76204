"""The API client's commands: ``generate``, ``batch``, ``compose``, ``pair-edit``, ``cost`` and
``credits``, through the SDK (:mod:`fluxserve.client`) against any BFL or OpenAI-compatible
server. They run with the base install: nothing here imports the server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fluxserve.cli.options import console, err_console

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
