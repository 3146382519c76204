"""Random-weight checkpoints, built on the device and saved as diffusers directories."""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpubench import GIB
from gpubench.configs import FLUX1_DEV_SCHEDULER, FLUX1_SCHNELL_SCHEDULER, KLEIN_SCHEDULER
from gpubench.report import Report


def word_tokenizer(max_length: int = 512):  # type: ignore[no-untyped-def]
    """A small word-level tokenizer with a chat template, for the Qwen3 text encoder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"])}
    for w in ("a", "the", "photo", "of", "red", "blue", "cat", "dog", "on", "in", "with"):
        vocab.setdefault(w, len(vocab))
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", model_max_length=max_length
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }} "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endif %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
    )
    return fast


def make_module(device: torch.device | str, dtype: torch.dtype, build: Callable[[], Any]) -> Any:
    """Construct a module directly on ``device`` in ``dtype`` (random init there: seconds for 12B
    weights on a GPU, instead of minutes on the host)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = build()
    finally:
        torch.set_default_dtype(old)
    return module.to(dtype).eval()


def _dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / GIB


def build_flux1(
    out: Path, arch: dict[str, Any], device: torch.device, dtype: torch.dtype, *, schnell: bool
) -> None:
    """A FLUX.1 [dev] (or [schnell]) pipeline with random weights in ``out``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from fluxserve.embedded.builder import make_clip_tokenizer, make_t5_tokenizer

    words = ["a", "photo", "of", "red", "blue", "cat", "dog", "on", "the", "with"]
    tmp = Path(tempfile.mkdtemp())
    tokenizer, _ = make_clip_tokenizer(words, tmp)
    tokenizer_2, _ = make_t5_tokenizer(words)
    torch.manual_seed(0)
    transformer_cfg = dict(arch["flux1_transformer"], guidance_embeds=not schnell)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            **(FLUX1_SCHNELL_SCHEDULER if schnell else FLUX1_DEV_SCHEDULER)
        ),
        vae=make_module(device, dtype, lambda: AutoencoderKL(**arch["flux1_vae"])),
        text_encoder=make_module(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**arch["clip"]))),
        tokenizer=tokenizer,
        text_encoder_2=make_module(device, dtype, lambda: T5EncoderModel(T5Config(**arch["t5"]))),
        tokenizer_2=tokenizer_2,
        transformer=make_module(device, dtype, lambda: FluxTransformer2DModel(**transformer_cfg)),
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]  # diffusers mixin, untyped
    shutil.rmtree(tmp, ignore_errors=True)
    del pipe


LINKED = ".links-to-flux1-dev"
"""Marks a checkpoint made of links to dev's files (deleted with dev's)."""


def build_kontext(out: Path, dev: Path) -> None:
    """FLUX.1 Kontext [dev]: the same architecture as [dev], so its components are [dev]'s
    (symbolic links: no second 34 GB on disk) under a FluxKontextPipeline model_index.json."""
    out.mkdir(parents=True, exist_ok=True)
    for part in dev.iterdir():
        if part.is_dir():
            (out / part.name).symlink_to(part.resolve(), target_is_directory=True)
    index = json.loads((dev / "model_index.json").read_text())
    index["_class_name"] = "FluxKontextPipeline"
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / LINKED).touch()


def build_schnell_links(out: Path, dev: Path) -> None:
    """FLUX.1 [schnell] over [dev]'s files: the same architecture without the guidance
    embedding (``guidance_embeds`` false: diffusers loads dev's weights and leaves the guidance
    embedder's out, with a "weights not used" warning) and schnell's scheduler."""
    out.mkdir(parents=True, exist_ok=True)
    for part in dev.iterdir():
        if part.is_dir() and part.name not in ("transformer", "scheduler"):
            (out / part.name).symlink_to(part.resolve(), target_is_directory=True)
    (out / "transformer").mkdir()
    for f in (dev / "transformer").iterdir():
        if f.name != "config.json":
            (out / "transformer" / f.name).symlink_to(f.resolve())
    config = json.loads((dev / "transformer" / "config.json").read_text())
    (out / "transformer" / "config.json").write_text(
        json.dumps(dict(config, guidance_embeds=False), indent=2)
    )
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX1_SCHNELL_SCHEDULER)
    scheduler.save_pretrained(str(out / "scheduler"))  # type: ignore[attr-defined]
    shutil.copy(dev / "model_index.json", out / "model_index.json")
    (out / LINKED).touch()


def build_klein(out: Path, arch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    """A FLUX.2 [klein] 4B pipeline (Qwen3 text encoder) with random weights in ``out``."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KLEIN_SCHEDULER),
        vae=make_module(device, dtype, lambda: AutoencoderKLFlux2(**arch["flux2_vae"])),
        text_encoder=make_module(
            device, dtype, lambda: Qwen3ForCausalLM(Qwen3Config(**arch["qwen3"], pad_token_id=0))
        ),
        tokenizer=word_tokenizer(),
        transformer=make_module(device, dtype, lambda: Flux2Transformer2DModel(**arch["klein_transformer"])),
        is_distilled=True,
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]
    del pipe


class Checkpoints:
    """Builds each model's directory once under ``root`` and deletes it after its last use."""

    def __init__(
        self, root: Path, arch: dict[str, Any], device: torch.device, dtype: torch.dtype, report: Report
    ):
        self.root = root
        self.arch = arch
        self.device = device
        self.dtype = dtype
        self.report = report
        root.mkdir(parents=True, exist_ok=True)

    def path(self, model: str) -> Path:
        """The checkpoint directory of ``model``, built if missing; returns at once if present.
        Kontext always, and schnell when dev's directory is here, link to dev's files."""
        out = self.root / model
        if (out / ".complete").exists():
            return out
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        dev = self.root / "flux1-dev"
        if model == "flux1-kontext-dev":
            build_kontext(out, self.path("flux1-dev"))
        elif model == "flux1-schnell" and (dev / ".complete").exists():
            build_schnell_links(out, dev)
        elif model in ("flux1-dev", "flux1-schnell"):
            build_flux1(out, self.arch, self.device, self.dtype, schnell=model == "flux1-schnell")
        else:
            build_klein(out, self.arch, self.device, self.dtype)
        (out / ".complete").touch()
        free_memory()
        self.report.log(
            f"built {model} in {time.perf_counter() - t:.1f} s: {_dir_gib(out):.1f} GiB at {out}"
            + (" (links to flux1-dev's files)" if (out / LINKED).exists() else "")
            + " "
            f"(disk free {shutil.disk_usage(self.root).free / GIB:.1f} GiB)"
        )
        return out

    def _linked(self) -> list[str]:
        return [n for n in ("flux1-kontext-dev", "flux1-schnell") if (self.root / n / LINKED).exists()]

    def drop(self, model: str, still_needed: set[str]) -> None:
        """Delete ``model``'s directory unless a later case needs it, and dev's once neither it
        nor a checkpoint linking to it is needed."""
        if model in still_needed:
            return
        if model == "flux1-dev" and {"flux1-kontext-dev", "flux1-schnell"} & still_needed:
            return  # they will link to dev's files
        names = [model] + (self._linked() if model == "flux1-dev" else [])
        users = {"flux1-dev", "flux1-kontext-dev", "flux1-schnell"} - {model}  # of dev's files
        if model in self._linked() and not users & still_needed:
            names += ["flux1-dev", *self._linked()]
        for name in dict.fromkeys(names):
            if (self.root / name).exists():
                shutil.rmtree(self.root / name, ignore_errors=True)
                self.report.log(f"deleted {name}'s checkpoint (not needed any more)")


def free_memory() -> None:
    """Give back what the last pipeline held (and the compiled graphs that reference it)."""
    gc.collect()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
