"""Fresh training batches for the GPU trainer, drawn by CPU worker processes.

A :class:`Recipe` says what one batch holds (captioned scenes or edit triples, the size, the
seed); :func:`make_batch` draws it with :mod:`training.embedded.scenes` (the same grammar,
layouts, held-out combinations and edit instructions as the CPU pool) and returns the scenes as
:class:`~training.embedded.gpu_scenes.SceneTensors` fields (the trainer renders them on the
GPU), the caption token ids and their caption-parsing labels. :class:`BatchStream` keeps
worker processes drawing a few batches ahead; with no workers it draws in the caller.
"""

from __future__ import annotations

import multiprocessing
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from training.embedded.data import label_batch, noisy_caption, wild_caption
from training.embedded.gpu_scenes import SceneTensors, scene_tensors
from training.embedded.scenes import Scene, caption, random_edit, random_scene


@dataclass(frozen=True)
class Recipe:
    """One batch to draw: ``kind`` "t2i" (captioned scenes) or "edit" (source, instruction,
    target); at w x h; ``singles``: one object per t2i scene; ``wild``: share of t2i captions
    with out-of-grammar words; ``seed``: the batch's own random stream."""

    kind: str
    w: int
    h: int
    batch: int
    seed: int
    singles: bool = False
    wild: float = 0.0
    max_text: int = 32


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from fluxserve.embedded.builder import make_t5_tokenizer
    from fluxserve.embedded.vocabulary import BASE_WORDS

    return make_t5_tokenizer(BASE_WORDS)[0]


def token_ids(texts: list[str], max_text: int) -> torch.Tensor:
    """The T5 token ids of ``texts``, padded and cut to ``max_text`` as the pipeline does
    (the fast backend called directly: a third of the time of the transformers wrapper)."""
    backend = _tokenizer().backend_tokenizer
    backend.enable_padding(length=max_text, pad_id=0, pad_token="<pad>")
    backend.enable_truncation(max_text)
    return torch.tensor([e.ids for e in backend.encode_batch(texts)], dtype=torch.long)


_LABELS: dict[tuple[int, ...], list[list[int]]] = {}


def _arrays(st: SceneTensors) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in st.as_dict().items()}


def make_batch(recipe: Recipe) -> dict[str, Any]:
    """Draw one batch: ``{"kind", "w", "h", "target": {...}, "source": {...} (edits),
    "ids": (b, max_text) int64, "labels": (b, max_text, 5) int8}`` as numpy arrays (cheap to
    send between processes)."""
    rng = random.Random(recipe.seed)
    w, h = recipe.w, recipe.h
    targets: list[Scene] = []
    sources: list[Scene] = []
    texts: list[str] = []
    while len(targets) < recipe.batch:
        if recipe.kind == "t2i":
            n = 1 if recipe.singles or rng.random() < 0.45 else 2
            scene = random_scene(rng, w, h, n)
            wild = recipe.wild and rng.random() < recipe.wild
            targets.append(scene)
            texts.append(wild_caption(scene, rng) if wild else noisy_caption(caption(scene, rng), rng))
        else:
            src = random_scene(rng, w, h, rng.choice((1, 2)))
            edit = random_edit(rng, src, w, h)
            if edit is None:
                continue
            sources.append(src)
            targets.append(edit[1])
            texts.append(noisy_caption(edit[0], rng))
    ids = token_ids(texts, recipe.max_text)
    if len(_LABELS) > 200_000:
        _LABELS.clear()
    labels = label_batch(_tokenizer(), ids, _LABELS)
    out: dict[str, Any] = {
        "kind": recipe.kind,
        "w": w,
        "h": h,
        "target": _arrays(scene_tensors(targets, w, h)),
        "ids": ids.numpy(),
        "labels": labels.to(torch.int8).numpy(),
    }
    if sources:
        out["source"] = _arrays(scene_tensors(sources, w, h))
    return out


def _quiet_worker() -> None:
    torch.set_num_threads(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes for :class:`BatchStream` (started fresh, not forked: the parent
    may hold a CUDA context). One pool can serve one stream after another."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_quiet_worker)


class BatchStream:
    """Batches drawn ahead by a worker pool (None: drawn on demand in this process).

    ``plan(i)`` gives the recipe of the i-th batch; :meth:`next` returns batches in order;
    ``ahead`` batches are on order at any time.
    """

    def __init__(
        self, plan: Callable[[int], Recipe], pool: ProcessPoolExecutor | None, ahead: int = 4
    ) -> None:
        self.plan, self.i, self.submitted, self.pool = plan, 0, 0, pool
        self.queue: deque[Future[dict[str, Any]]] = deque()
        if pool is not None:
            for _ in range(ahead):
                self._submit()

    def _submit(self) -> None:
        assert self.pool is not None
        self.queue.append(self.pool.submit(make_batch, self.plan(self.submitted)))
        self.submitted += 1

    def next(self) -> dict[str, Any]:
        """The next batch, as :func:`make_batch` returns it."""
        if self.pool is None:
            batch = make_batch(self.plan(self.i))
        else:
            batch = self.queue.popleft().result()
            self._submit()
        self.i += 1
        return batch

    def close(self) -> None:
        """Drop the batches ordered ahead (the pool stays, for the next stream)."""
        for f in self.queue:
            f.cancel()
        self.queue.clear()


def scenes_of(arrays: dict[str, np.ndarray], device: torch.device) -> SceneTensors:
    """A batch's ``"target"`` or ``"source"`` arrays as :class:`SceneTensors` on ``device``."""
    return SceneTensors(**{k: torch.from_numpy(v) for k, v in arrays.items()}).to(device)
