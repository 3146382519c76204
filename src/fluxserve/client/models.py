"""What the SDK hands back: generation results, cost estimates and batch reports."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image


@dataclass
class GenerationResult:
    """One generated image, downloaded, with what the server reported about it."""

    image: bytes
    seed: int | None
    prompt: str
    """The final prompt (after upsampling, if any)."""
    model: str
    job_id: str | None
    output_format: str
    timings: dict[str, float] = field(default_factory=dict)
    """Client-side: submit_s, wait_s, download_s, total_s; plus the server's own when given."""
    url: str | None = None

    def save(self, path: str | Path) -> Path:
        """Write the image; a path without a suffix gets the format's."""
        p = Path(path)
        if not p.suffix:
            p = p.with_suffix("." + ("jpg" if self.output_format == "jpeg" else self.output_format))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.image)
        return p

    def to_pil(self) -> Image.Image:
        """The image as a PIL image."""
        return Image.open(io.BytesIO(self.image))


@dataclass
class CostEstimate:
    """What ``count`` images of ``model`` cost, and whose prices said so."""

    model: str
    count: int
    unit_price: float
    total: float
    source: Literal["server", "default", "custom"]
    currency: str = "USD"


@dataclass(frozen=True)
class Credits:
    """The caller's balance on the server (``GET /v1/credits``), in BFL credits."""

    credits: float
    """1 credit = 0.01 USD, the unit of a BFL job's ``cost``."""
    unlimited: bool = False
    """True when the server does no credit accounting (fluxserve without accounts)."""

    @property
    def usd(self) -> float:
        """The balance in US dollars."""
        return self.credits / 100


@dataclass
class BatchProgress:
    """Live counts of a running batch, passed to its ``on_progress`` callback."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        """Items that will not run again in this batch: done, failed or skipped."""
        return self.done + self.failed + self.skipped


@dataclass
class BatchItemResult:
    """The outcome of one batch item; also one line of the batch's manifest."""

    index: int
    key: str
    input: dict[str, Any]
    status: Literal["done", "failed", "skipped"]
    file: str | None = None
    seed: int | None = None
    duration: float | None = None
    error: str | None = None
    job_id: str | None = None


@dataclass
class BatchReport:
    """Every item's outcome, in input order, and where the manifest is."""

    items: list[BatchItemResult]
    manifest: Path

    @property
    def done(self) -> int:
        """Items generated and saved in this run."""
        return sum(i.status == "done" for i in self.items)

    @property
    def failed(self) -> int:
        """Items that failed in this run (a re-run tries them again)."""
        return sum(i.status == "failed" for i in self.items)

    @property
    def skipped(self) -> int:
        """Items the manifest already recorded as done."""
        return sum(i.status == "skipped" for i in self.items)
