"""True classifier-free guidance in one transformer call a step instead of two.

diffusers' FLUX.1 pipelines run true CFG (``true_cfg_scale`` with a negative prompt) as two
transformer calls a step: the conditional one, then the unconditional one on the same latents.
A small transformer on a CPU (the embedded model) is bound by the cost of each call (hundreds of
small kernels, attention set-up), not by arithmetic, so one call on a batch of two costs little
more than one call: pairing the two nearly halves the denoising time.

diffusers has no switch for this, so :func:`paired_guidance` wraps the transformer's ``forward``
for the length of one pipeline call. The first step runs as the pipeline asks and shows the
wrapper the unconditional call's text inputs; from then on each conditional call runs on a batch
of two (its own inputs and those) and keeps the unconditional half, which the next call gets
back if it really is that call (the same latents, the same text-input tensors). Anything else
runs unchanged, so a pipeline that calls the transformer another way still gets right results;
it only loses the saving. The two halves differ from two separate calls only in float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

_TEXT_INPUTS = ("encoder_hidden_states", "pooled_projections")
"""The inputs that differ between the conditional and the unconditional call."""

_SHARED_INPUTS = ("txt_ids", "img_ids", "joint_attention_kwargs")
"""Inputs both calls must pass alike: the batch of two takes one of each (ids are per token)."""


class _Pairing:
    """The state of one pipeline call: which call comes next, and what the last one kept."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self._forward = forward
        self._expect_uncond = False
        self._uncond_inputs: dict[str, Any] | None = None  # learnt from the first step
        self._kept: torch.Tensor | None = None
        self._kept_for: torch.Tensor | None = None
        self.paired_steps = 0

    def __call__(self, hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        if self._expect_uncond:
            self._expect_uncond = False
            return self._uncond(hidden_states, kwargs)
        self._expect_uncond = True
        if self._uncond_inputs is None or not self._can_pair(hidden_states, kwargs):
            return self._forward(hidden_states=hidden_states, **kwargs)
        return self._paired(hidden_states, kwargs)

    def _uncond(self, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        kept, kept_for = self._kept, self._kept_for
        self._kept = self._kept_for = None
        if self._uncond_inputs is None:  # the first step: remember what the unconditional call reads
            self._uncond_inputs = {name: kwargs.get(name) for name in _TEXT_INPUTS + _SHARED_INPUTS}
        elif kept is not None and hidden_states is kept_for and self._same_uncond_inputs(kwargs):
            return self._result(kept, kwargs)
        return self._forward(hidden_states=hidden_states, **kwargs)

    def _same_uncond_inputs(self, kwargs: dict[str, Any]) -> bool:
        assert self._uncond_inputs is not None
        return all(kwargs.get(name) is value for name, value in self._uncond_inputs.items())

    def _can_pair(self, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> bool:
        """Whether the unconditional inputs batch with this conditional call's."""
        assert self._uncond_inputs is not None
        if not all(_alike(kwargs.get(name), self._uncond_inputs[name]) for name in _SHARED_INPUTS):
            return False
        for name in _TEXT_INPUTS:
            mine, theirs = kwargs.get(name), self._uncond_inputs[name]
            if not isinstance(mine, torch.Tensor) or not isinstance(theirs, torch.Tensor):
                return False
            if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
                return False
        if kwargs.get("controlnet_block_samples") is not None:
            return False
        timestep = kwargs.get("timestep")
        return isinstance(timestep, torch.Tensor) and timestep.shape[:1] == hidden_states.shape[:1]

    def _paired(self, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        assert self._uncond_inputs is not None
        n = hidden_states.shape[0]
        both = dict(kwargs, return_dict=False)
        for name in _TEXT_INPUTS:
            both[name] = torch.cat([kwargs[name], self._uncond_inputs[name]])
        for name in ("timestep", "guidance"):
            if isinstance(kwargs.get(name), torch.Tensor):
                both[name] = torch.cat([kwargs[name], kwargs[name]])
        out = self._forward(hidden_states=torch.cat([hidden_states, hidden_states]), **both)[0]
        self._kept, self._kept_for = out[n:], hidden_states
        self.paired_steps += 1
        return self._result(out[:n], kwargs)

    @staticmethod
    def _result(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        """The transformer's return value for ``sample``: a tuple, or its output class."""
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=sample)
        return (sample,)


def _alike(a: Any, b: Any) -> bool:
    """The same input: one object, or tensors of equal values (the text ids of the two calls
    are two tensors of zeros)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))
    return False


@contextmanager
def paired_guidance(transformer: torch.nn.Module) -> Iterator[_Pairing]:
    """Pair the conditional and unconditional transformer calls of true CFG (see the module
    docstring) until the block ends. Meant for one pipeline call with true CFG on: a call
    without it still gets right results, but every other step computes a batch it throws away."""
    own = vars(transformer).get("forward")  # a diffusers hook's wrapper, if any: it runs inside
    pairing = _Pairing(transformer.forward)
    transformer.forward = pairing  # type: ignore[method-assign]
    try:
        yield pairing
    finally:
        if own is None:
            del transformer.forward
        else:
            transformer.forward = own  # type: ignore[method-assign]


def true_cfg_pairing(
    transformer: torch.nn.Module, true_cfg: bool, scale: float
) -> AbstractContextManager[object]:
    """:func:`paired_guidance` where the pipeline runs true CFG (a checkpoint guided with a
    negative prompt, at a scale above 1: diffusers' own rule), else nothing."""
    return paired_guidance(transformer) if true_cfg and scale > 1 else nullcontext()
