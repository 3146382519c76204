"""Batches: many generations with bounded concurrency, saved as they finish, resumable.

Each finished item becomes one line of ``out_dir/manifest.jsonl``, written and synced at once,
so a crash loses at most the items in flight. A re-run skips the items that the manifest
records as done (their file still there) and tries the others again. Within a run, transient
failures (server errors, timeouts) are retried; validation and moderation failures are not.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fluxserve.client.errors import FluxError, GenerationTimeout, ServerError, ValidationError
from fluxserve.client.models import BatchItemResult, BatchProgress, BatchReport, GenerationResult

Generate = Callable[..., Awaitable[GenerationResult]]
"""``AsyncFluxClient.generate``, or anything called the same way."""
ProgressCallback = Callable[[BatchProgress], None]

DEFAULT_MODEL = "flux-kontext-pro"
NOT_PARAMETERS = ("prompt", "model", "name", "images")
"""Item keys that are not keyword arguments of ``generate``."""
INT_COLUMNS = ("seed", "width", "height", "steps", "safety_tolerance")


def load_batch_file(path: str | Path) -> list[dict[str, Any]]:
    """Items from a .txt (one prompt a line, # comments), .csv (header row) or .jsonl file."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        return _jsonl_items(text, p)
    if p.suffix == ".csv":
        return [_csv_item(row) for row in csv.DictReader(io.StringIO(text))]
    return [
        {"prompt": line.strip()}
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _jsonl_items(text: str, path: Path) -> list[dict[str, Any]]:
    """One item per non-blank line: an object, or anything else as a prompt."""
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from exc
            items.append(obj if isinstance(obj, dict) else {"prompt": str(obj)})
    return items


def _csv_item(row: dict[str | Any, str | Any]) -> dict[str, Any]:
    """A CSV row as an item: empty cells left out, numbers and booleans converted."""
    item: dict[str, Any] = {}
    for k, v in row.items():
        if k is None or v is None or v == "":
            continue
        k = k.strip()
        if k in INT_COLUMNS:
            item[k] = int(v)
        elif k == "guidance":
            item[k] = float(v)
        elif k == "prompt_upsampling":
            item[k] = v.strip().lower() in ("1", "true", "yes")
        else:
            item[k] = v
    return item


def item_key(item: dict[str, Any]) -> str:
    """Identity of a batch item in the manifest: a hash of its parameters."""
    return hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slug(text: str, n: int = 40) -> str:
    """A file-name-safe prefix of ``text``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


class Manifest:
    """``manifest.jsonl`` in a batch's output directory: one JSON line per finished item."""

    def __init__(self, out_dir: Path) -> None:
        """The manifest of ``out_dir`` (created on the first append)."""
        self.out_dir = out_dir
        self.path = out_dir / "manifest.jsonl"
        self._lock = asyncio.Lock()

    def done_items(self) -> dict[str, dict[str, Any]]:
        """Records of items that earlier runs finished and whose file is still there, by key."""
        done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if rec.get("status") == "done" and rec.get("file") and (self.out_dir / rec["file"]).exists():
                    done[rec["key"]] = rec
        return done

    async def append(self, rec: BatchItemResult) -> None:
        """Add one record and sync it to disk before returning."""
        line = json.dumps({f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}) + "\n"
        async with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())


async def run_batch(
    generate: Generate,
    items: Iterable[str | dict[str, Any]],
    concurrency: int,
    out_dir: str | Path,
    on_progress: ProgressCallback | None,
    retries: int,
) -> BatchReport:
    """Run ``items`` (prompts, or dicts of ``generate`` arguments plus ``model``, ``images`` and
    ``name``) through ``generate``; see :meth:`AsyncFluxClient.batch`."""
    return await _BatchRun(generate, items, concurrency, Path(out_dir), on_progress, retries).run()


class _BatchRun:
    """The state of one batch run: what the manifest had done, progress, results so far."""

    def __init__(
        self,
        generate: Generate,
        items: Iterable[str | dict[str, Any]],
        concurrency: int,
        out_dir: Path,
        on_progress: ProgressCallback | None,
        retries: int,
    ) -> None:
        self.generate = generate
        self.out_dir = out_dir
        self.on_progress = on_progress
        self.retries = retries
        out_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(out_dir)
        self.done_before = self.manifest.done_items()
        self.items = [{"prompt": i} if isinstance(i, str) else dict(i) for i in items]
        self.progress = BatchProgress(total=len(self.items))
        self.results: list[BatchItemResult] = []
        self.slots = asyncio.Semaphore(max(1, concurrency))

    async def run(self) -> BatchReport:
        """Run every item concurrently (at most ``concurrency`` generating at once)."""
        self._report()
        await asyncio.gather(*(self._run_item(i, item) for i, item in enumerate(self.items)))
        self.results.sort(key=lambda r: r.index)
        return BatchReport(self.results, self.manifest.path)

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def _run_item(self, index: int, item: dict[str, Any]) -> None:
        """Skip the item if an earlier run did it; else generate it and record the outcome."""
        key = item_key(item)
        if key in self.done_before:
            rec = self.done_before[key]
            self.results.append(BatchItemResult(index, key, item, "skipped", rec["file"], rec.get("seed")))
            self.progress.skipped += 1
            self._report()
            return
        async with self.slots:
            self.progress.running += 1
            self._report()
            result = await self._generate_item(index, key, item)
            await self.manifest.append(result)
            self.results.append(result)
            self.progress.running -= 1
            if result.status == "done":
                self.progress.done += 1
            else:
                self.progress.failed += 1
            self._report()

    async def _generate_item(self, index: int, key: str, item: dict[str, Any]) -> BatchItemResult:
        """Generate and save the item, retrying transient failures; never raises a FluxError."""
        t0 = time.monotonic()
        params = {k: v for k, v in item.items() if k not in NOT_PARAMETERS}
        last_error: FluxError | None = None
        for attempt in range(self.retries + 1):
            try:
                res = await self.generate(
                    str(item.get("prompt", "")),
                    item.get("model", DEFAULT_MODEL),
                    input_images=item.get("images"),
                    **params,
                )
            except (ServerError, GenerationTimeout) as exc:  # transient: try again
                last_error = exc
                if attempt < self.retries:
                    await asyncio.sleep(0.5 * 2**attempt)
                continue
            except FluxError as exc:  # validation, moderation, auth: retrying won't help
                last_error = exc
                break
            except TypeError as exc:  # an unknown parameter in the item
                last_error = ValidationError(f"bad item parameters: {exc}")
                break
            name = item.get("name") or f"{index:04d}-{_slug(str(item.get('prompt', '')))}"
            path = res.save(self.out_dir / name)
            duration = round(time.monotonic() - t0, 3)
            return BatchItemResult(index, key, item, "done", path.name, res.seed, duration, job_id=res.job_id)
        assert last_error is not None
        return BatchItemResult(
            index,
            key,
            item,
            "failed",
            duration=round(time.monotonic() - t0, 3),
            error=f"{last_error.__class__.__name__}: {last_error}",
            job_id=last_error.job_id,
        )
