"""``fluxserve serve`` with torch.compile's counters written to a file: the server check's child.

    python bench/cudacheck/counting_server.py COUNTS.json serve --host ... --port ...

Runs fluxserve's own command line (``fluxserve.cli.main``, what ``python -m fluxserve`` runs) in
this process after starting a thread that writes dynamo's and inductor's counters to
``COUNTS.json`` every 0.2 s: the graphs compiled so far (``unique_graphs``), the frames compiled
(``frames_ok``), inductor's FX-graph cache hits and misses, and ``prefetched``: the engine's
prefetches that encoded a queued job's prompt (its ``prefetch`` is wrapped to count them). The
check reads the file before and after a request: what the request compiled, counted rather than
timed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


PREFETCHED = [0]


def count_prefetches() -> None:
    """Wrap the engine's ``prefetch`` so that each prompt it encodes is counted."""
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    original = DiffusersFluxEngine.prefetch

    def prefetch(self: DiffusersFluxEngine, request: Any) -> bool:
        encoded = original(self, request)
        PREFETCHED[0] += int(encoded)
        return encoded

    DiffusersFluxEngine.prefetch = prefetch  # type: ignore[method-assign]


def snapshot() -> dict[str, float]:
    """The compile counters now."""
    from torch._dynamo.utils import counters

    return {
        "time": time.time(),
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frames_ok": counters["frames"]["ok"],
        "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
        "prefetched": PREFETCHED[0],
    }


def write_counters(path: Path) -> None:
    """Rewrite ``path`` with :func:`snapshot` every 0.2 s (atomically)."""
    tmp = path.with_suffix(".tmp")
    while True:
        tmp.write_text(json.dumps(snapshot()))
        tmp.replace(path)
        time.sleep(0.2)


def main() -> None:
    """Start the counter thread, then fluxserve's command line with the remaining arguments."""
    path = Path(sys.argv[1])
    count_prefetches()
    threading.Thread(target=write_counters, args=(path,), daemon=True).start()
    sys.argv = ["fluxserve", *sys.argv[2:]]
    from fluxserve.cli import main as fluxserve_main

    fluxserve_main()


if __name__ == "__main__":
    main()
