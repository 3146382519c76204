"""GPU benchmark (issue 12): plain diffusers against fluxserve's engine, then the server under load.

Builds full-size FLUX architectures from their published configs with random weights (nothing is
downloaded; the tokenizers are small local ones, and every pipeline pads the prompt to its full
length, so the text encoders do the same work as with the real vocabularies), saves each as a
diffusers directory, and in one process on one GPU times

- ``diffusers``: the pipeline called as diffusers' documentation shows,
  ``FluxPipeline.from_pretrained(dir, torch_dtype=torch.bfloat16).to("cuda")`` then
  ``pipe(prompt, height=, width=, guidance_scale=, num_inference_steps=, max_sequence_length=512,
  generator=)``;
- fluxserve's engine (:class:`fluxserve.engines.diffusers_engine.DiffusersFluxEngine`, loading the
  same directory through fluxserve's own loader and :class:`fluxserve.settings.Settings`) in each
  mode of :data:`MODES`: ``bf16`` (every speed option off), ``fast`` (fused QKV, regional
  ``torch.compile``, channels-last VAE, fp8 weights through torchao where the GPU has fp8) and
  ``fast+fbcache`` (``fast`` plus First Block Cache: lossy, labelled ``lossy`` in the JSON).

Each case reports seconds per image (median of ``--runs`` >= 5 after warm-up), peak GPU memory,
load and warm-up (compile) seconds, the ratio to plain diffusers and ``image_vs``: how far its
first image (prompt 0, seed 0) is from that of each mode measured before it for the model (mean
absolute difference in levels of 255 and PSNR; ``bf16`` against ``diffusers`` checks that the
engine draws the plain pipeline's image, ``fast`` and ``fbcache`` show what fp8 and step
caching change; with random weights that is a numerical distance, not a judgement of the
picture), and is written to the JSON
file the moment it is measured, so a run cut off by the device's 10-minute limit still returns
what it measured. ``--part server`` then runs ``fluxserve serve`` on loopback with one random-weight
checkpoint and 8 concurrent clients (httpx, OpenAI Images route) and reports images/s and the
fraction of wall time the GPU was busy, sampled from NVML at 10 Hz (see :class:`GpuSampler`).

Output: a console log and ``gpu-<device>-<date>.json`` (``device``, ``torch``, ``diffusers``,
``cases``, ``server``) in ``$OUT`` when set, else ``bench/results/``. The runbook (the two device
commands, their carry list, the minutes each takes) is in bench/RESULTS.md, "GPU benchmark".

``--tiny`` runs the same code path with tiny configs on the CPU (2 steps, small sizes, float32,
``quantize`` off: fp8 needs a GPU), the server part included; tests/test_bench_gpu.py runs it.

    python bench/gpu.py --part engine --models flux1-dev,flux1-kontext-dev
    python bench/gpu.py --part engine,server --models flux1-schnell,flux2-klein-4b
    python bench/gpu.py --tiny --part engine,server

Time per case on one H100 (estimates, to fit the device's 9-minute commands; the budget guard
``--budget-s`` skips, and records as skipped, a case whose estimate no longer fits):
checkpoint build (random init on the GPU + save): dev 34 GB ~70 s, klein 16 GB ~35 s, schnell
(own copy) ~70 s; dev/Kontext load ~20 s per pipeline from the page cache; dev 28 steps plain
~7 s/image -> 6 runs ~45 s; Kontext (twice the image tokens) ~12 s/image -> ~75 s; schnell and
klein 4 steps ~1 s/image; ``fast`` adds the compile warm-up, ~40-90 s the first time (the
inductor cache on local disk makes the next compile of the same blocks faster).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # on the device fluxserve is the repo itself, not installed

import torch  # noqa: E402

GIB = 1024**3
MODELS = ("flux1-dev", "flux1-kontext-dev", "flux1-schnell", "flux2-klein-4b")

# --------------------------------------------------------------------------------------------
# Architectures. Full size: the published configs; tiny: the same shapes scaled down (the
# tiny checkpoints of fluxserve.embedded.builder and tests/tiny_checkpoints.py).
# --------------------------------------------------------------------------------------------

# black-forest-labs/FLUX.1-dev transformer/config.json (FLUX.1-Kontext-dev's is the same; schnell's
# has guidance_embeds false). Also diffusers scripts/convert_flux_to_diffusers.py, which builds
# FluxTransformer2DModel(in_channels=64, guidance_embeds=has_guidance) with these defaults, and
# the original flux repo's "flux-dev" params (depth 19, depth_single_blocks 38, hidden 3072,
# 24 heads, context_in_dim 4096, vec_in_dim 768, axes_dim [16, 56, 56]).
FLUX1_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# black-forest-labs/FLUX.1-dev vae/config.json: the SD3 VAE config with FLUX's scaling and shift
# (diffusers scripts/convert_flux_to_diffusers.py: AutoencoderKL.from_config(sd3 vae config,
# scaling_factor=0.3611, shift_factor=0.1159); the flux repo's ae_params ch 128, ch_mult
# [1, 2, 4, 4], num_res_blocks 2, z_channels 16).
FLUX1_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
# black-forest-labs/FLUX.1-dev text_encoder/config.json: openai/clip-vit-large-patch14's text model.
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# black-forest-labs/FLUX.1-dev text_encoder_2/config.json: google/t5-v1_1-xxl's encoder (d_model
# 4096, d_ff 10240, 64 heads of 64, 24 layers, gated-gelu; as T5 1.1 xxl's gin and torchtune's
# t5_v1p1_xxl_encoder). Dropout is 0.1 there; it does nothing in eval mode.
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json (Kontext-dev's is the same).
FLUX1_DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
# black-forest-labs/FLUX.1-schnell scheduler/scheduler_config.json.
FLUX1_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# diffusers scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config("klein-4b")
# (the config black-forest-labs/FLUX.2-klein-4B's transformer/config.json holds).
KLEIN4B_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)
# diffusers scripts/convert_flux2_to_diffusers.py builds the FLUX.2 VAE as AutoencoderKLFlux2()
# with its defaults (block_out_channels 128/256/512/512, latent_channels 32, patch_size 2x2).
FLUX2_VAE: dict[str, Any] = {}
# Qwen/Qwen3-4B config.json, FLUX.2-klein-4B's text encoder (its hidden states 9, 18 and 27 are
# stacked: 3 x 2560 = the transformer's joint_attention_dim 7680).
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# The convert script takes FLUX.1-dev's scheduler for FLUX.2.
KLEIN_SCHEDULER = FLUX1_DEV_SCHEDULER

TINY = {
    "flux1_transformer": dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
    "flux1_vae": dict(
        FLUX1_VAE,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ),
    "clip": dict(
        CLIP_L,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=32,
    ),
    "t5": dict(
        T5_XXL, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8
    ),
    "klein_transformer": dict(
        KLEIN4B_TRANSFORMER,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
    ),
    "flux2_vae": dict(
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    # 28 layers: the pipeline reads hidden states 9, 18 and 27 (3 x 16 = joint_attention_dim 48).
    "qwen3": dict(
        QWEN3_4B,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=28,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        vocab_size=128,  # the word tokenizer's ~90 ids; the full vocabulary's LM head would dominate
    ),
}
FULL = {
    "flux1_transformer": FLUX1_TRANSFORMER,
    "flux1_vae": FLUX1_VAE,
    "clip": CLIP_L,
    "t5": T5_XXL,
    "klein_transformer": KLEIN4B_TRANSFORMER,
    "flux2_vae": FLUX2_VAE,
    "qwen3": QWEN3_4B,
}


# --------------------------------------------------------------------------------------------
# Cases and modes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCase:
    """One model as benchmarked: its pipeline, how diffusers' docs call it, its steps."""

    name: str
    pipeline: str
    steps: int
    guidance: float
    reference_image: bool = False
    """Kontext: the request edits a 1024x1024 input image (twice the image tokens)."""


CASES = {
    "flux1-dev": ModelCase("flux1-dev", "FluxPipeline", 28, 3.5),
    "flux1-kontext-dev": ModelCase("flux1-kontext-dev", "FluxKontextPipeline", 28, 2.5, True),
    "flux1-schnell": ModelCase("flux1-schnell", "FluxPipeline", 4, 0.0),
    "flux2-klein-4b": ModelCase("flux2-klein-4b", "Flux2KleinPipeline", 4, 1.0),
}

MODES: dict[str, dict[str, Any]] = {
    # fluxserve with every speed option off: its own overhead over plain diffusers.
    "bf16": dict(fuse_qkv=False, compile=False, channels_last=False, quantize="none", cache="none"),
    # fluxserve's speed options on CUDA. quantize "fast": the CUDA default of the fluxserve in
    # the tree ("auto" once Settings has it: fp8 dynamic activations and weights where the GPU
    # has fp8; else an explicit "fp8", weight-only) - see fast_quantize().
    "fast": dict(fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="none"),
    # Lossy: First Block Cache (diffusers' FirstBlockCacheConfig, fluxserve's default threshold)
    # over "fast" without compile: fluxserve compiles the blocks with fullgraph=True, which cannot
    # trace diffusers' FBC hook (torch.compiler.disable'd: "Skip inlining ... _should_compute_
    # remaining_blocks"), seen on the CPU with torch 2.13 / diffusers 0.42.
    "fbcache": dict(fuse_qkv=True, compile=False, channels_last=True, quantize="fast", cache="fbcache"),
    # The same with compile: the engine compiles around the cache's hooks (fullgraph off).
    "fast+fbcache": dict(fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="fbcache"),
    # Request batching: 4 requests (different prompts and seeds) in one pipeline call through
    # the engine's generate_batch; seconds_median is per image. Does batching pay on this GPU?
    "fast+batch4": dict(
        fuse_qkv=True, compile=True, channels_last=True, quantize="fast", cache="none", batch_size=4
    ),
    "bf16+batch4": dict(
        fuse_qkv=False, compile=False, channels_last=False, quantize="none", cache="none", batch_size=4
    ),
}
LOSSY_MODES = {"fbcache", "fast+fbcache"}

# The default plan, most important first: (model, mode). "diffusers" is the baseline. FLUX.1
# Kontext has no step cache in fluxserve (its pipeline does not mark denoiser calls), and at 4
# steps a step cache has nothing to skip, so fbcache runs for dev only.
PLAN: list[tuple[str, str]] = [
    ("flux1-dev", "diffusers"),
    ("flux1-dev", "fast"),
    ("flux1-kontext-dev", "diffusers"),
    ("flux1-kontext-dev", "fast"),
    ("flux1-dev", "fbcache"),
    ("flux1-dev", "bf16"),
    ("flux2-klein-4b", "diffusers"),
    ("flux2-klein-4b", "fast"),
    ("flux1-schnell", "diffusers"),
    ("flux1-schnell", "fast"),
    ("flux1-schnell", "fast+batch4"),
]
# Seconds each (model, mode) takes on one H100, load + warm-up + runs (estimates for the budget
# guard; a checkpoint build adds BUILD_ESTIMATE_S).
ESTIMATE_S = {
    ("flux1-dev", "diffusers"): 70,
    ("flux1-dev", "bf16"): 70,
    ("flux1-dev", "fast"): 120,
    ("flux1-dev", "fbcache"): 60,
    ("flux1-dev", "fast+fbcache"): 80,
    ("flux1-kontext-dev", "diffusers"): 100,
    ("flux1-kontext-dev", "fast"): 110,
    ("flux1-schnell", "diffusers"): 30,
    ("flux1-schnell", "fast"): 70,
    ("flux1-schnell", "fast+batch4"): 60,
    ("flux2-klein-4b", "diffusers"): 25,
    ("flux2-klein-4b", "fast"): 60,
}
BUILD_ESTIMATE_S = {"flux1-dev": 70, "flux1-kontext-dev": 70, "flux1-schnell": 70, "flux2-klein-4b": 35}
SERVER_ESTIMATE_S = 150


def fp8_ok(device: torch.device) -> bool:
    """Whether fluxserve's quantize = 'fp8' can run here (CUDA 8.9+ and torchao importable)."""
    import importlib.util

    return (
        device.type == "cuda"
        and torch.cuda.get_device_capability(device) >= (8, 9)
        and importlib.util.find_spec("torchao") is not None
    )


# --------------------------------------------------------------------------------------------
# Output: console log and the JSON file, rewritten after every case
# --------------------------------------------------------------------------------------------


class Report:
    """The run's JSON document and console log, written to disk after every change."""

    def __init__(self, out_dir: Path, device: torch.device, tiny: bool, merge: Path | None) -> None:
        import diffusers

        self.device_name = device_label(device)
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"gpu-{self.device_name}-{date}" + ("-tiny" if tiny else "")
        self.json_path = out_dir / f"{stem}.json"
        self.log_path = out_dir / f"{stem}.log"
        self.doc: dict[str, Any] = {
            "device": self.device_name,
            "device_full": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "date": date,
            "tiny": tiny,
            "cases": [],
            "server": None,
        }
        if merge is not None and merge.is_file():  # the second command adds to the first's file
            old = json.loads(merge.read_text())
            self.doc["cases"] = old.get("cases", [])
            self.doc["server"] = old.get("server")
            if merge.with_suffix(".log").is_file():
                self.log_path.write_text(merge.with_suffix(".log").read_text())
        self._log = self.log_path.open("a")
        self.save()

    def log(self, text: str) -> None:
        """Print a line and append it to the console log."""
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def add_case(self, row: dict[str, Any]) -> None:
        """Record one measured (or failed, or skipped) case and write the file at once."""
        self.doc["cases"] = [
            c for c in self.doc["cases"] if (c["model"], c["mode"]) != (row["model"], row["mode"])
        ] + [row]
        self.save()

    def baseline(self, model: str) -> float | None:
        """The plain diffusers median of ``model``, if measured."""
        for c in self.doc["cases"]:
            if c["model"] == model and c["mode"] == "diffusers" and c.get("seconds_median"):
                return float(c["seconds_median"])
        return None

    def save(self) -> None:
        """Write the JSON document (atomically)."""
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        tmp.replace(self.json_path)


def device_label(device: torch.device) -> str:
    """``h100``, ``h200``, ``a100`` ... from the GPU's name; ``cpu`` on the CPU."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h200", "h100", "b200", "a100", "l40s", "l4", "a10g", "4090"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# --------------------------------------------------------------------------------------------
# Random-weight checkpoints, saved as diffusers directories
# --------------------------------------------------------------------------------------------


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


def _make(device: torch.device, dtype: torch.dtype, build: Callable[[], Any]) -> Any:
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
        vae=_make(device, dtype, lambda: AutoencoderKL(**arch["flux1_vae"])),
        text_encoder=_make(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**arch["clip"]))),
        tokenizer=tokenizer,
        text_encoder_2=_make(device, dtype, lambda: T5EncoderModel(T5Config(**arch["t5"]))),
        tokenizer_2=tokenizer_2,
        transformer=_make(device, dtype, lambda: FluxTransformer2DModel(**transformer_cfg)),
    )
    pipe.save_pretrained(str(out))
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

    FlowMatchEulerDiscreteScheduler(**FLUX1_SCHNELL_SCHEDULER).save_pretrained(str(out / "scheduler"))
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
        vae=_make(device, dtype, lambda: AutoencoderKLFlux2(**arch["flux2_vae"])),
        text_encoder=_make(
            device, dtype, lambda: Qwen3ForCausalLM(Qwen3Config(**arch["qwen3"], pad_token_id=0))
        ),
        tokenizer=word_tokenizer(),
        transformer=_make(device, dtype, lambda: Flux2Transformer2DModel(**arch["klein_transformer"])),
        is_distilled=True,
    )
    pipe.save_pretrained(str(out))
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


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (so wall-clock time is the work's time)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_image(size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """A deterministic input image for Kontext (noise, not zeros)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@dataclass
class Timing:
    """What one case measured."""

    load_s: float
    warmup_s: float
    seconds: list[float] = field(default_factory=list)
    peak_mem_gib: float | None = None
    first_image: Any = None
    """The first timed call's image (prompt 0, seed 0): compared across modes."""


def time_calls(
    call: Callable[[int], Any], device: torch.device, warmup: int, runs: int
) -> tuple[float, list[float], float | None, Any]:
    """Run ``call(i)`` ``warmup`` times (timed together), then ``runs`` times each timed; returns
    (warm-up seconds, run seconds, peak memory GiB over the runs and the weights, the first
    timed call's result)."""
    t = time.perf_counter()
    for i in range(warmup):
        call(10_000 + i)
    sync(device)
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    first = None
    for i in range(runs):
        sync(device)
        t = time.perf_counter()
        out = call(i)
        sync(device)
        seconds.append(time.perf_counter() - t)
        first = out if i == 0 else first
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return warmup_s, seconds, peak, first


def image_difference(a: Any, b: Any) -> dict[str, float]:
    """How far two images of the same prompt and seed are apart: mean absolute difference in
    levels of 255, and PSNR in dB (inf: identical). With random weights this measures how much
    a mode changes the output, not how good the picture looks."""
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"mean_abs": round(float(np.abs(x - y).mean()), 3), "psnr_db": round(psnr, 2)}


def prompt(i: int) -> str:
    """A different prompt per call: fluxserve's prompt-embedding cache must not skip the text
    encoders in a per-image timing (the plain pipeline has no such cache)."""
    return f"a photo of a red cat on the {i} blue dog"


def run_diffusers(
    case: ModelCase,
    ckpt: Path,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    warmup: int,
    runs: int,
) -> Timing:
    """Plain diffusers, as its documentation calls the pipeline."""
    import diffusers

    cls = getattr(diffusers, case.pipeline)
    t = time.perf_counter()
    pipe = cls.from_pretrained(str(ckpt), torch_dtype=dtype).to(device.type)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    load_s = time.perf_counter() - t
    width, height = size
    image = reference_image(size) if case.reference_image else None

    def call(i: int) -> Any:
        kwargs: dict[str, Any] = {}
        if image is not None:
            kwargs["image"] = image
            if size != (1024, 1024):  # the output area (default 1024^2), as fluxserve passes it
                kwargs["max_area"] = width * height
        return pipe(
            prompt=prompt(i),
            height=height,
            width=width,
            guidance_scale=case.guidance,
            num_inference_steps=case.steps,
            max_sequence_length=512,
            generator=torch.Generator("cpu").manual_seed(i),
            **kwargs,
        ).images[0]

    # The pipeline is freed when this returns (main calls free_memory after every case).
    warmup_s, seconds, peak, first = time_calls(call, device, warmup, runs)
    return Timing(load_s, warmup_s, seconds, peak, first)


def fast_quantize(device: torch.device) -> str:
    """The quantization of the ``fast`` modes: fluxserve's own CUDA default, ``auto``, where its
    Settings take it (the engine then picks fp8 dynamic where the GPU has fp8, none elsewhere);
    with an older Settings, ``fp8`` (weight-only) where the GPU has fp8, else ``none``."""
    from fluxserve.settings import Settings

    try:
        Settings(quantize="auto")
        return "auto"
    except Exception:
        return "fp8" if fp8_ok(device) else "none"


def mode_settings(
    mode: str, device: torch.device, ckpt: Path, data_dir: Path, size: tuple[int, int]
) -> tuple[dict[str, Any], Any]:
    """fluxserve Settings values for ``mode`` on ``device`` (explicit values: they do not depend
    on the defaults of the day), and the Settings object. A compiled mode warms up at ``size``
    when the Settings have ``warmup_sizes`` (fluxserve then compiles at load time)."""
    from fluxserve.settings import Settings

    values = dict(MODES[mode])
    if values["quantize"] == "fast":
        values["quantize"] = fast_quantize(device)
    if "warmup_sizes" in Settings.model_fields:
        values["warmup_sizes"] = [f"{size[0]}x{size[1]}"] if values["compile"] else []
    settings = Settings(
        default_checkpoint=str(ckpt),
        data_dir=data_dir,
        device=device.type,
        dtype="bfloat16" if device.type == "cuda" else "float32",
        memory="gpu" if device.type == "cuda" else "auto",
        **values,
    )
    return values, settings


def run_fluxserve(
    case: ModelCase,
    mode: str,
    ckpt: Path,
    device: torch.device,
    size: tuple[int, int],
    warmup: int,
    runs: int,
    data_dir: Path,
) -> tuple[Timing, dict[str, Any], dict[str, Any]]:
    """fluxserve's engine loading ``ckpt`` through its own loader, in ``mode``."""
    from fluxserve.catalog import ModelCatalog
    from fluxserve.engines import EngineRequest
    from fluxserve.engines.checkpoints import checkpoint_resolver
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    values, settings = mode_settings(mode, device, ckpt, data_dir, size)
    catalog = ModelCatalog.from_settings(settings)
    engine = DiffusersFluxEngine(
        checkpoint_resolver(settings, catalog),
        settings.device,
        settings.dtype,
        prompt_cache_size=settings.prompt_cache_size,
    )
    t = time.perf_counter()
    engine.load(str(ckpt))
    sync(device)
    load_s = time.perf_counter() - t
    width, height = size
    images = [reference_image(size)] if case.reference_image else []

    def request(i: int) -> Any:
        return EngineRequest(
            checkpoint=str(ckpt),
            prompt=prompt(i),
            width=width,
            height=height,
            seed=i,
            steps=case.steps,
            guidance=case.guidance,
            images=list(images),
        )

    batch = settings.batch_size if "batch_size" in values else 1

    def call(i: int) -> Any:
        if batch > 1:  # call i runs requests i*batch .. i*batch+batch-1; image 0 is request i*batch
            return engine.generate_batch([request(i * batch + k) for k in range(batch)])[0][0]
        return engine.generate(request(i))[0]

    loaded = engine.loaded(str(ckpt))
    extra: dict[str, Any] = {"memory_mode": loaded.memory.mode if loaded else None}
    warmup_s, seconds, peak, first = time_calls(call, device, warmup, runs)
    if batch > 1:
        seconds = [s / batch for s in seconds]  # per image
        extra["batch_size"] = batch
    extra["prompt_cache_hits"] = engine.prompt_cache.hits
    return Timing(load_s, warmup_s, seconds, peak, first), values, extra


# --------------------------------------------------------------------------------------------
# The server under 8 clients
# --------------------------------------------------------------------------------------------


class GpuSampler:
    """Samples the GPU's utilization at ~10 Hz in a thread: NVML's ``utilization.gpu`` (pynvml,
    from nvidia-ml-py; else ``nvidia-smi --query-gpu=utilization.gpu``), the percent of the last
    sample period (1/6 s to 1 s, by driver) in which at least one kernel ran on the GPU. Its
    limits: it says a kernel was running, not how full the GPU was (one small kernel counts as
    busy), and its window is coarser than one denoising step. torch.cuda events cannot see
    another process's kernels, so the server is measured from outside like this."""

    def __init__(self, index: int = 0, hz: float = 10.0) -> None:
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._interval = 1.0 / hz
        self._read: Callable[[], float] | None = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "nvml utilization.gpu at 10 Hz"
        except Exception:
            if shutil.which("nvidia-smi"):
                cmd = [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                ]
                self._read = lambda: float(
                    subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                )
                self.source = "nvidia-smi utilization.gpu (~10 Hz at best)"
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set() and self._read is not None:
            try:
                self.samples.append(self._read())
            except Exception:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def busy(self) -> float | None:
        """Mean utilization over the samples, 0..1 (None without a GPU to read)."""
        return statistics.fmean(self.samples) / 100 if self.samples else None


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(
    report: Report,
    case: ModelCase,
    ckpt: Path,
    device: torch.device,
    mode: str,
    size: tuple[int, int],
    clients: int,
    requests: int,
    out_dir: Path,
    data_dir: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """``fluxserve serve`` on loopback with ``ckpt`` in ``mode``, driven by ``clients`` threads
    of synchronous OpenAI Images calls (httpx, b64_json) until ``requests`` images are made."""
    import httpx

    model = case.name
    values, _ = mode_settings(mode, device, ckpt, data_dir, size)
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        FLUXSERVE_DEFAULT_CHECKPOINT=str(ckpt),
        FLUXSERVE_LOG_LEVEL="warning",
        FLUXSERVE_DEVICE=device.type,
        FLUXSERVE_FUSE_QKV=str(values["fuse_qkv"]).lower(),
        FLUXSERVE_COMPILE=str(values["compile"]).lower(),
        FLUXSERVE_CHANNELS_LAST=str(values["channels_last"]).lower(),
        FLUXSERVE_QUANTIZE=values["quantize"],
        FLUXSERVE_CACHE=values["cache"],
    )
    if values.get("warmup_sizes"):
        env["FLUXSERVE_WARMUP_SIZES"] = ",".join(values["warmup_sizes"])
    log_file = (out_dir / "server.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "fluxserve",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO))
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {
        "model": model,
        "mode": mode,
        "checkpoint": "random weights, " + model,
        "width": size[0],
        "height": size[1],
        "steps": case.steps,
        "clients": clients,
        "requests": requests,
        "api": "OpenAI Images (POST /v1/images/generations, b64_json, jpeg), httpx",
        "images_per_s": None,
        "gpu_busy": None,
        "quantize": values["quantize"],
    }
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fluxserve serve exited with {proc.returncode} (see server.log)")
            try:
                r = httpx.get(base + "/readyz", timeout=5)
                if r.status_code == 200:
                    break
                if r.json().get("status") == "error":
                    raise RuntimeError(f"the server could not load the model: {r.text}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            time.sleep(0.5)
        result["ready_s"] = round(time.perf_counter() - t_start, 2)
        report.log(f"server ready in {result['ready_s']} s (start + load)")
        http = httpx.Client(base_url=base, timeout=timeout_s)

        def one(i: int) -> float:
            t = time.perf_counter()
            r = http.post(
                "/v1/images/generations",
                json={
                    "model": "flux-dev",
                    "prompt": prompt(i),
                    "size": f"{size[0]}x{size[1]}",
                    "response_format": "b64_json",
                    "output_format": "jpeg",
                    "steps": case.steps,
                    "seed": i,
                },
            )
            r.raise_for_status()
            if not r.json()["data"][0].get("b64_json"):
                raise RuntimeError(f"no image in the answer: {r.text[:200]}")
            return time.perf_counter() - t

        t = time.perf_counter()
        for i in range(2):  # compile warm-up (the first request of a size) happens here
            one(100_000 + i)
        result["warmup_s"] = round(time.perf_counter() - t, 2)
        report.log(f"server warm-up (2 requests, compile included) {result['warmup_s']} s")
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
        result["wall_s"] = round(wall, 3)
        result["images_per_s"] = round(requests / wall, 4)
        result["latency_p50_s"] = round(statistics.median(latencies), 4)
        result["latency_max_s"] = round(max(latencies), 4)
        result["gpu_busy"] = None if gpu.busy is None else round(gpu.busy, 4)
        result["gpu_busy_source"] = gpu.source if gpu.samples else "none: no GPU to sample"
        result["gpu_busy_samples"] = len(gpu.samples)
        result["engine_busy"] = engine_busy(data_dir, requests, wall)
        http.close()
    except Exception as exc:
        result["error"] = f"{exc.__class__.__name__}: {exc}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
    return result


def engine_busy(data_dir: Path, requests: int, wall: float) -> float | None:
    """Sum of the engine times the server recorded for the measured jobs (the last ``requests``
    rows of its SQLite job table) over the wall time: the share of time a job was in the engine
    (the GPU may idle within it: text encoding on the host, the VAE's PIL conversion)."""
    import sqlite3

    try:
        db = sqlite3.connect(data_dir / "fluxserve.sqlite3")
        rows = [json.loads(r[0]) for r in db.execute("SELECT result FROM jobs ORDER BY rowid") if r[0]]
        db.close()
        engine = [float(r["engine_s"]) for r in rows[-requests:] if "engine_s" in r]
        return round(sum(engine) / wall, 4) if len(engine) == requests else None
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; returns the exit status (0 even when a case failed: its row says why)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (proves the script)")
    ap.add_argument("--part", default="engine,server", help="engine, server, or both (comma-separated)")
    ap.add_argument("--models", default=",".join(MODELS), help="models for the engine part")
    ap.add_argument(
        "--modes",
        default="diffusers," + ",".join(MODES),
        help=(
            "modes for the engine part: they filter PLAN, the (model, mode) list in this file, "
            "most important first (--tiny: every model in every mode)"
        ),
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs per case (median; >= 5 for the record)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024; tiny 64)")
    ap.add_argument("--server-model", default="flux1-schnell", choices=MODELS)
    ap.add_argument("--server-mode", default="fast", choices=list(MODES))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=None, help="server requests (default 64; tiny 16)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="checkpoints (default a temp dir on local disk)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default $OUT, else bench/results)"
    )
    ap.add_argument("--merge", type=Path, default=None, help="a JSON file of an earlier part to add to")
    ap.add_argument("--budget-s", type=float, default=None, help="skip cases whose estimate no longer fits")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints at the end")
    args = ap.parse_args(argv)

    parts = {p.strip() for p in args.part.split(",") if p.strip()}
    if not parts <= {"engine", "server"}:
        ap.error("--part takes engine and/or server")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in models:
        if m not in CASES:
            ap.error(f"unknown model {m!r}: one of {', '.join(MODELS)}")
    for m in modes:
        if m != "diffusers" and m not in MODES:
            ap.error(f"unknown mode {m!r}: diffusers or one of {', '.join(MODES)}")

    start = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded (the device has no network)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or use --tiny on the CPU", file=sys.stderr)
        return 2
    if args.tiny:  # tiny tensors: one thread is fastest, and shares a busy CPU best
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the server's process too
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = TINY if args.tiny else FULL
    side = args.size or (64 if args.tiny else 1024)
    size = (side, side)
    runs = max(1, args.runs)
    out_dir = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    report = Report(out_dir, device, args.tiny, args.merge)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fluxserve-gpu-bench-"))
    checkpoints = Checkpoints(workdir, arch, device, dtype, report)
    report.log(
        f"device {report.doc['device_full']}, torch {torch.__version__}, "
        f"diffusers {report.doc['diffusers']}, fp8 {'yes' if fp8_ok(device) else 'no'}, "
        f"fast quantize {fast_quantize(device)!r}; parts {sorted(parts)}; "
        f"checkpoints in {workdir}; results {report.json_path}"
    )

    def left() -> float:
        return float("inf") if args.budget_s is None else args.budget_s - (time.monotonic() - start)

    cases = {k: replace(c, steps=2) for k, c in CASES.items()} if args.tiny else CASES
    plan = [(m, mode) for m, mode in PLAN if m in models and mode in modes] if "engine" in parts else []
    if args.tiny and "engine" in parts:  # every mode asked for, for every model: each path proven
        plan = [
            (m, mode)
            for m in models
            for mode in modes
            if not (
                MODES.get(mode, {}).get("cache", "none") != "none"
                and cases[m].pipeline == "FluxKontextPipeline"
            )
        ]
    server_needs = {args.server_model} if "server" in parts else set()
    data_root = Path(tempfile.mkdtemp(prefix="fluxserve-gpu-data-"))
    images: dict[str, dict[str, Any]] = {}  # model -> mode -> first timed image
    for k, (model, mode) in enumerate(plan):
        case = cases[model]
        row: dict[str, Any] = {
            "model": model,
            "mode": mode,
            "width": size[0],
            "height": size[1],
            "steps": case.steps,
        }
        built = (workdir / model / ".complete").exists()
        need = ESTIMATE_S.get((model, mode), 60) + (0 if built else BUILD_ESTIMATE_S[model])
        need += SERVER_ESTIMATE_S if server_needs else 0
        if not args.tiny and need > left():
            row["skipped"] = f"budget: about {need} s needed, {left():.0f} s left"
            report.log(f"{model} {mode}: skipped ({row['skipped']})")
            report.add_case(row)
            continue
        try:
            ckpt = checkpoints.path(model)
            report.log(f"{model} {mode}: {case.steps} steps at {size[0]}x{size[1]} ...")
            warmup = 2 if mode != "diffusers" and MODES[mode]["compile"] else 1
            if mode == "diffusers":
                timing = run_diffusers(case, ckpt, device, dtype, size, warmup, runs)
                row["call"] = f"{case.pipeline}.from_pretrained(dir, torch_dtype={dtype}).to('{device.type}')"
            else:
                timing, values, extra = run_fluxserve(
                    case, mode, ckpt, device, size, warmup, runs, data_root / f"{model}-{mode}"
                )
                row.update(settings=values, **extra)
                if mode in LOSSY_MODES:
                    row["lossy"] = True
                    row["note"] = (
                        "step caching with random weights: how many steps it skips is not what real "
                        "weights give; the time is an indication only"
                    )
            # What each mode does to the image: against every mode measured before it for this
            # model (bf16 against diffusers should be ~0; fp8 and step caching show their cost).
            if timing.first_image is not None:
                earlier = images.setdefault(model, {})
                row["image_vs"] = {m: image_difference(timing.first_image, im) for m, im in earlier.items()}
                earlier[mode] = timing.first_image
            median = statistics.median(timing.seconds)
            base = report.baseline(model) if mode != "diffusers" else median
            row.update(
                seconds_median=round(median, 4),
                seconds=[round(s, 4) for s in timing.seconds],
                runs=len(timing.seconds),
                warmup_runs=warmup,
                peak_mem_gib=None if timing.peak_mem_gib is None else round(timing.peak_mem_gib, 2),
                load_s=round(timing.load_s, 2),
                warmup_s=round(timing.warmup_s, 2),
                # from the load to the first image at full speed (fluxserve may compile at load)
                ready_s=round(timing.load_s + timing.warmup_s, 2),
                ratio_to_diffusers=None if not base else round(median / base, 4),
                speedup_vs_diffusers=None if not base else round(base / median, 3),
            )
            report.log(
                f"{model} {mode}: {median:.3f} s/image (median of {len(timing.seconds)}), "
                f"peak {row['peak_mem_gib']} GiB, load {row['load_s']} s, warm-up {row['warmup_s']} s"
                + (f", x{row['speedup_vs_diffusers']} vs diffusers" if base else "")
            )
        except Exception as exc:  # one failing mode must not cost the others
            import traceback

            row["error"] = f"{exc.__class__.__name__}: {exc}"
            report.log(f"{model} {mode}: FAILED {row['error']}\n{traceback.format_exc()}")
        free_memory()  # the pipeline of this case is garbage now
        report.add_case(row)
        later = {m for m, _ in plan[k + 1 :]} | server_needs
        checkpoints.drop(model, later)

    if "server" in parts:
        need = SERVER_ESTIMATE_S + (
            0 if (workdir / args.server_model / ".complete").exists() else BUILD_ESTIMATE_S[args.server_model]
        )
        if not args.tiny and need > left():
            report.doc["server"] = {"skipped": f"budget: about {need} s needed, {left():.0f} s left"}
            report.save()
        else:
            ckpt = checkpoints.path(args.server_model)
            requests = args.requests or (16 if args.tiny else 64)
            server_side = max(256, side) if args.tiny else side  # the API's smallest side is 256
            report.log(
                f"server: {args.server_model} in mode {args.server_mode}, {args.clients} clients, "
                f"{requests} images at {server_side}x{server_side} ..."
            )
            timeout = 120 if args.tiny else 480
            res = run_server(
                report,
                cases[args.server_model],
                ckpt,
                device,
                args.server_mode,
                (server_side, server_side),
                args.clients,
                requests,
                out_dir,
                data_root / "server",
                timeout,
            )
            report.doc["server"] = res
            report.save()
            report.log("server: " + json.dumps(res))

    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(data_root, ignore_errors=True)
    print_table(report)
    return 0


def print_table(report: Report) -> None:
    """The summary table, last (the device's reply carries the end of the output)."""
    report.log(f"{'model':<18} {'mode':<13} {'s/image':>8} {'x diff':>7} {'peak GiB':>8} {'ready s':>9}")
    for c in report.doc["cases"]:
        if "seconds_median" in c:
            report.log(
                f"{c['model']:<18} {c['mode']:<13} {c['seconds_median']:>8.3f} "
                f"{c.get('speedup_vs_diffusers') or 0:>7.2f} {c.get('peak_mem_gib') or 0:>8.1f} "
                f"{c['ready_s']:>9.1f}"
            )
        else:
            report.log(f"{c['model']:<18} {c['mode']:<13} {c.get('error') or c.get('skipped')}")
    s = report.doc.get("server")
    if s:
        report.log(
            f"server {s.get('model')} {s.get('mode')}: {s.get('clients')} clients, "
            f"{s.get('images_per_s')} images/s, gpu busy {s.get('gpu_busy')}, "
            f"engine busy {s.get('engine_busy')}" + (f", ERROR {s['error']}" if s.get("error") else "")
        )
    report.log(f"results: {report.json_path}")


if __name__ == "__main__":
    sys.exit(main())
