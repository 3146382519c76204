"""Prompt-embedding cache: a repeated prompt (batch jobs, retries, n > 1, the empty negative
prompt of true-CFG checkpoints) skips the text encoders.

The text encoders' outputs depend only on the prompt, the checkpoint, the sequence length and
the LoRA adapters that are active (an adapter may patch a text encoder), so those are the key.
Embeddings are computed once for one image and repeated for ``n`` images, which is exactly
what the pipelines do themselves: a cached run gives the same bytes as an uncached one.
FLUX.1 and Kontext pipelines (and their inpainting variants) take precomputed embeddings this
way; FLUX.2 pipelines are called with the prompt as before.

The cache is thread-safe: :meth:`PromptCache.prepare` encodes the prompt of the next job in
another thread while the current job denoises, and that job then finds its embeddings here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

FLUX1_FAMILIES = ("flux1", "flux1-kontext")
"""Families whose pipelines take ``prompt_embeds`` + ``pooled_prompt_embeds``."""
PROMPT_GRAMMARS = ("scenes",)
"""What a checkpoint's ``fluxserve.json`` may declare as ``prompt_grammar``: ``scenes``, the
embedded model's grammar (:mod:`fluxserve.embedded.grammar`)."""


def fit_prompt(grammar: str | None, prompt: str, editing: bool) -> tuple[str, str | None]:
    """The prompt a checkpoint's text encoders get, and a note for the job's result when that
    is only an approximation of ``prompt``. Checkpoints that declare no grammar (every real
    FLUX checkpoint) read any prompt: they get it unchanged, with no note."""
    if grammar != "scenes":
        return prompt, None
    from fluxserve.embedded.grammar import fit

    fitted = fit(prompt, editing)
    return fitted.caption, fitted.note


class PromptCache:
    """The text-encoder outputs of the last ``size`` prompts (0: no cache), least recently used
    out first."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self.prepared = 0
        """Prompts encoded ahead of their job by :meth:`prepare`."""
        self._entries: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()  # held while encoding: a prompt is encoded once

    def _embeddings(self, pipe: Any, key: Hashable, prompt: str, max_sequence_length: int) -> tuple[Any, Any]:
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self.hits += 1
                self._entries.move_to_end(key)
                return cached
            self.misses += 1
            return self._encode(pipe, key, prompt, max_sequence_length)

    def _encode(self, pipe: Any, key: Hashable, prompt: str, max_sequence_length: int) -> tuple[Any, Any]:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        if self.size > 0:
            self._entries[key] = (embeds, pooled)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return embeds, pooled

    def pipeline_kwargs(
        self,
        pipe: Any,
        key: Hashable,
        prompt: str,
        num_images: int,
        max_sequence_length: int,
        negative: bool,
    ) -> dict[str, Any]:
        """Keyword arguments that replace ``prompt`` (and the empty ``negative_prompt`` when
        ``negative``) in a FLUX.1 pipeline call for ``num_images`` images."""
        embeds, pooled = self._embeddings(pipe, (key, prompt), prompt, max_sequence_length)
        kwargs = {
            "prompt_embeds": embeds.repeat(num_images, 1, 1),
            "pooled_prompt_embeds": pooled.repeat(num_images, 1),
        }
        if negative:
            neg, neg_pooled = self._embeddings(pipe, (key, ""), "", max_sequence_length)
            kwargs["negative_prompt_embeds"] = neg.repeat(num_images, 1, 1)
            kwargs["negative_pooled_prompt_embeds"] = neg_pooled.repeat(num_images, 1)
        return kwargs

    def prepare(
        self, pipe: Any, key: Hashable, prompt: str, max_sequence_length: int, negative: bool
    ) -> bool:
        """Encode ``prompt`` (and the empty negative prompt when ``negative``) into the cache
        unless it is there already, without counting a hit or a miss: the job that uses it
        later counts a hit. Returns whether anything was encoded."""
        if self.size <= 0:
            return False
        encoded = False
        for text in (prompt, "") if negative else (prompt,):
            with self._lock:
                if (key, text) in self._entries:
                    continue
                self._encode(pipe, (key, text), text, max_sequence_length)
                self.prepared += 1
                encoded = True
        return encoded

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self._entries.clear()
