"""GPU benchmark (issues 12 and 28): plain diffusers against fluxserve's engine, then the server.

The code is the package ``bench/gpubench/`` (its docstring says what is measured and how; the
runbook is bench/RESULTS.md, "GPU benchmark"); this script is its entry point, run from the
repository root on the device machine, where fluxserve is the tree itself (``src/``), not an
installed package:

    python3 bench/gpu.py --plan first --budget-s 400   # the one-command plan of issue 28
    python3 bench/gpu.py --part engine --models flux1-dev,flux1-kontext-dev
    python3 bench/gpu.py --tiny --part engine,server   # the same code path on the CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "src"), str(BENCH)]  # fluxserve from the tree; gpubench beside

from gpubench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
