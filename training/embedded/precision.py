"""Mixed precision where it pays: bfloat16 autocast on a GPU, and on a CPU only when its
bfloat16 matrix products are faster than float32 ones.

A CPU without bfloat16 instructions (no AVX512-BF16 or AMX) runs bfloat16 products through a
slow fallback: on the project's machine one day it was 50 times slower than float32, so a
training run there under autocast crawled at a twentieth of its speed.
"""

from __future__ import annotations

import contextlib
import time
from functools import cache
from typing import Any

import torch


@cache
def bf16_pays(device_type: str) -> bool:
    """Whether bfloat16 matrix products beat float32 ones on ``device_type`` (measured once)."""
    if device_type != "cpu":
        return True
    a = torch.randn(256, 256)

    def seconds(dtype: torch.dtype) -> float:
        x = a.to(dtype)
        x @ x
        t = time.perf_counter()
        for _ in range(8):
            x @ x
        return time.perf_counter() - t

    return seconds(torch.bfloat16) < seconds(torch.float32)


def autocast(device_type: str) -> Any:
    """``torch.autocast`` in bfloat16 where :func:`bf16_pays`, else a context that does nothing."""
    if bf16_pays(device_type):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
