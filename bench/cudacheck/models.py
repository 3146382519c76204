"""FLUX architectures from their published configs, built with random weights and saved as
diffusers directories (nothing can be downloaded on the GPU machine), and random LoRAs for them.

The configs are those of ``bench/gpu.py`` (issue 12), which cites where each comes from; they are
repeated here so that this check does not depend on that script's layout. ``TINY`` is the same
shapes scaled down for ``--tiny`` on the CPU.
"""

from __future__ import annotations

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

GIB = 1024**3

# black-forest-labs/FLUX.1-dev transformer/config.json (Kontext-dev's is the same).
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
# black-forest-labs/FLUX.1-dev vae/config.json.
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
# black-forest-labs/FLUX.1-dev text_encoder/config.json (CLIP ViT-L/14's text model).
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
# black-forest-labs/FLUX.1-dev text_encoder_2/config.json (T5 v1.1 XXL's encoder).
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
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json.
FLUX1_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
# diffusers scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config("klein-4b").
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
# Qwen/Qwen3-4B config.json, FLUX.2-klein-4B's text encoder.
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

FULL: dict[str, dict[str, Any]] = {
    "flux1_transformer": FLUX1_TRANSFORMER,
    "flux1_vae": FLUX1_VAE,
    "clip": CLIP_L,
    "t5": T5_XXL,
    "klein_transformer": KLEIN4B_TRANSFORMER,
    "flux2_vae": {},  # AutoencoderKLFlux2's defaults are FLUX.2's VAE (the convert script)
    "qwen3": QWEN3_4B,
}
TINY: dict[str, dict[str, Any]] = {
    "flux1_transformer": dict(
        FLUX1_TRANSFORMER,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    ),
    "flux1_vae": dict(
        FLUX1_VAE, block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4
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
        vocab_size=128,
    ),
}
WORDS = ["a", "photo", "of", "red", "blue", "cat", "dog", "on", "the", "with", "in"]


def word_tokenizer(max_length: int = 512) -> Any:
    """A small word-level tokenizer with a chat template, for the Qwen3 text encoder (the
    pipeline pads to the full length, so the encoder does the real vocabulary's work)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", *WORDS])}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()  # type: ignore[assignment]
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
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


def _make(device: torch.device | str, dtype: torch.dtype, build: Callable[[], Any]) -> Any:
    """Construct a module directly on ``device`` in ``dtype`` (random init on a GPU takes seconds
    for 12 B weights; ``meta`` allocates nothing, for counting)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = build()
    finally:
        torch.set_default_dtype(old)
    return module.to(dtype).eval()


def _flux1_modules(
    arch: dict[str, dict[str, Any]], device: torch.device | str, dtype: torch.dtype
) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return {
        "transformer": _make(device, dtype, lambda: FluxTransformer2DModel(**arch["flux1_transformer"])),
        "text_encoder_2": _make(device, dtype, lambda: T5EncoderModel(T5Config(**arch["t5"]))),
        "text_encoder": _make(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**arch["clip"]))),
        "vae": _make(device, dtype, lambda: AutoencoderKL(**arch["flux1_vae"])),
    }


def _klein_modules(
    arch: dict[str, dict[str, Any]], device: torch.device | str, dtype: torch.dtype
) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return {
        "transformer": _make(device, dtype, lambda: Flux2Transformer2DModel(**arch["klein_transformer"])),
        "text_encoder": _make(
            device, dtype, lambda: Qwen3ForCausalLM(Qwen3Config(**arch["qwen3"], pad_token_id=0))
        ),
        "vae": _make(device, dtype, lambda: AutoencoderKLFlux2(**arch["flux2_vae"])),
    }


def component_bytes(model: str, arch: dict[str, dict[str, Any]] = FULL, itemsize: int = 2) -> dict[str, int]:
    """Bytes of each component of ``model`` (``flux1-dev``, ``flux2-klein-4b``) at ``itemsize``
    bytes a weight, counted on the meta device (nothing allocated): what the engine's
    ``component_bytes`` reads from the files of a full-size checkpoint."""
    modules = (_flux1_modules if model == "flux1-dev" else _klein_modules)(arch, "meta", torch.bfloat16)
    return {name: sum(p.numel() for p in m.parameters()) * itemsize for name, m in modules.items()}


def build_flux1_dev(
    out: Path, arch: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype
) -> None:
    """FLUX.1 [dev] with random weights, saved as a diffusers directory in ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from fluxserve.embedded.builder import make_clip_tokenizer, make_t5_tokenizer

    tmp = Path(tempfile.mkdtemp())
    tokenizer, _ = make_clip_tokenizer(WORDS, tmp)
    tokenizer_2, _ = make_t5_tokenizer(WORDS)
    torch.manual_seed(0)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **_flux1_modules(arch, device, dtype),
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]
    shutil.rmtree(tmp, ignore_errors=True)


def link_kontext(out: Path, dev: Path) -> None:
    """FLUX.1 Kontext [dev]: [dev]'s architecture, so its components are links to [dev]'s files
    (no second copy on disk) under a FluxKontextPipeline model_index.json."""
    out.mkdir(parents=True, exist_ok=True)
    for part in dev.iterdir():
        if part.is_dir():
            (out / part.name).symlink_to(part.resolve(), target_is_directory=True)
    index = json.loads((dev / "model_index.json").read_text())
    index["_class_name"] = "FluxKontextPipeline"
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def build_klein(out: Path, arch: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype) -> None:
    """FLUX.2 [klein] 4B (Qwen3 text encoder) with random weights, saved in ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    torch.manual_seed(0)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER),
        tokenizer=word_tokenizer(),
        is_distilled=True,
        **_klein_modules(arch, device, dtype),
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]


def make_lora(out: Path, transformer_config: dict[str, Any], seed: int, rank: int = 4) -> Path:
    """A random LoRA on the attention projections of a FLUX.1 transformer, made with peft (its
    layer names and shapes, on the meta device: no 12 B model is built) and saved as diffusers
    saves trained LoRAs."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**transformer_config)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
    )
    transformer.add_adapter(config)  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for key, meta in get_peft_model_state_dict(transformer).items():
        fan_in = meta.shape[1]
        # x A^T B^T about as large as the base projection's output: a visible change, no overflow
        layers[key] = torch.randn(tuple(meta.shape), generator=g) / fan_in**0.5
    tmp = out.parent / f".{out.stem}"
    FluxPipeline.save_lora_weights(str(tmp), transformer_lora_layers=layers)
    (tmp / "pytorch_lora_weights.safetensors").rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def dir_gib(path: Path) -> float:
    """Size of the files under ``path`` (links not followed)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / GIB


class Checkpoints:
    """Builds each checkpoint once under ``root`` (``flux1-dev``, ``flux1-kontext-dev`` linking
    to dev's files, ``flux2-klein-4b``, ``loras``) and logs what it cost."""

    BUILD_S = {"flux1-dev": 70, "flux1-kontext-dev": 1, "flux2-klein-4b": 35, "loras": 5}
    """Seconds a build takes on one H100 (estimates for the budget)."""

    def __init__(
        self,
        root: Path,
        arch: dict[str, dict[str, Any]],
        device: torch.device,
        dtype: torch.dtype,
        log: Callable[[str], None],
    ) -> None:
        self.root = root
        self.arch = arch
        self.device = device
        self.dtype = dtype
        self.log = log
        root.mkdir(parents=True, exist_ok=True)

    def built(self, name: str) -> bool:
        """Whether ``name`` is built already."""
        return (self.root / name / ".complete").exists()

    def estimate_s(self, names: list[str]) -> float:
        """Seconds to build those of ``names`` not built yet (Kontext needs dev's files)."""
        todo = {n for n in names if not self.built(n)}
        if "flux1-kontext-dev" in todo and not self.built("flux1-dev"):
            todo.add("flux1-dev")
        return sum(self.BUILD_S[n] for n in todo)

    def drop(self, keep: set[str]) -> None:
        """Delete the checkpoints not in ``keep`` (the disk holds 64 GiB: dev's 31 and klein's
        15 GiB should not be there at once); dev's files stay while Kontext, which links to
        them, is kept."""
        if "flux1-kontext-dev" in keep:
            keep = keep | {"flux1-dev"}
        for name in self.BUILD_S:
            if name not in keep and (self.root / name).exists():
                shutil.rmtree(self.root / name, ignore_errors=True)
                self.log(f"deleted {name} (no later check needs it)")

    def path(self, name: str) -> Path:
        """The directory of ``name``, built if missing."""
        out = self.root / name
        if self.built(name):
            return out
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        if name == "flux1-dev":
            build_flux1_dev(out, self.arch, self.device, self.dtype)
        elif name == "flux1-kontext-dev":
            link_kontext(out, self.path("flux1-dev"))
        elif name == "flux2-klein-4b":
            build_klein(out, self.arch, self.device, self.dtype)
        elif name == "loras":
            out.mkdir(parents=True)
            for lora, seed in (("ink", 1), ("chalk", 2)):
                make_lora(out / f"{lora}.safetensors", self.arch["flux1_transformer"], seed)
        else:
            raise ValueError(f"unknown checkpoint {name!r}")
        (out / ".complete").touch()
        gc.collect()  # the built modules hold GPU memory until their reference cycles go
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.log(
            f"built {name} in {time.perf_counter() - start:.1f} s: {dir_gib(out):.2f} GiB at {out} "
            f"(disk free {shutil.disk_usage(self.root).free / GIB:.1f} GiB)"
        )
        return out
