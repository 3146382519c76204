"""Progress lines of the training stages: ``[stage] i/total (pct) rate eta extra``."""

from __future__ import annotations

import time


class Progress:
    """Prints a stage's progress at most every 10 seconds, and at the end."""

    def __init__(self, name: str, total: int, start: int = 0) -> None:
        self.name, self.total, self.start, self.t0 = name, total, start, time.time()
        self.last = 0.0

    def update(self, i: int, **info: float) -> None:
        """Record that ``i`` of ``total`` are done; ``info`` (e.g. the loss) goes on the line."""
        now = time.time()
        if now - self.last < 10 and i < self.total:
            return
        self.last = now
        done = i - self.start
        rate = done / max(1e-9, now - self.t0)
        eta = (self.total - i) / max(rate, 1e-9)
        extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        print(
            f"[{self.name}] {i}/{self.total} ({100 * i / self.total:.1f}%) "
            f"{rate:.2f} it/s eta {eta / 60:.1f} min {extra}",
            flush=True,
        )
