"""Tiny checkpoints for the loading tests: FLUX.2 (klein), single-file transformers, hub caches.

Everything is built from random weights and local tokenizers; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def _word_tokenizer():  # type: ignore[no-untyped-def]
    """A word-level tokenizer with a chat template (lower-case words, characters as fallback)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "a",
        "an",
        "the",
        "red",
        "blue",
        "green",
        "cat",
        "dog",
        "square",
        "circle",
        "on",
        "in",
        "of",
        "and",
        "with",
        "picture",
        "photo",
    ]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"] + words)}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", model_max_length=512
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast, len(vocab)


def _flux2_parts(text_dim: int, guidance_embeds: bool) -> tuple[Any, Any, Any]:
    """The tiny FLUX.2 transformer (over ``text_dim`` text features), autoencoder and scheduler
    that both FLUX.2 layouts share (made in this order, after the text encoder, so a seed
    gives the same weights)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=None,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000,
        guidance_embeds=guidance_embeds,
    )
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    return transformer, vae, scheduler


def build_tiny_flux2_klein(out: Path, *, seed: int = 0, native_area: int = 64 * 64) -> Path:
    """A random tiny Flux2KleinPipeline (Qwen3 text encoder) written to ``out``."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer, vocab = _word_tokenizer()
    hidden = 16
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=28,  # the pipeline reads hidden states 9, 18 and 27
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=0,
        )
    )
    transformer, vae, scheduler = _flux2_parts(3 * hidden, guidance_embeds=False)
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )
    pipe.save_pretrained(str(out))
    (out / "fluxserve.json").write_text(json.dumps({"native_area": native_area, "max_sequence_length": 32}))
    return out


def build_tiny_flux2(out: Path, *, seed: int = 0, native_area: int = 64 * 64) -> Path:
    """A random tiny Flux2Pipeline (FLUX.2 [dev] layout: a Mistral 3 text encoder, guidance
    embedded in the transformer) written to ``out``. The tokenizer is a plain word tokenizer
    with a chat template, which is all the pipeline asks of its processor for text."""
    from diffusers import Flux2Pipeline
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer, _ = _word_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "[IMG]"]})
    hidden = 16
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=MistralConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden,
                intermediate_size=32,
                num_hidden_layers=30,  # the pipeline reads hidden states 10, 20 and 30
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=512,
                pad_token_id=0,
            ),
            vision_config=PixtralVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                head_dim=8,
                image_size=64,
                patch_size=16,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
            spatial_merge_size=1,
            vision_feature_layer=-1,
        )
    )
    transformer, vae, scheduler = _flux2_parts(3 * hidden, guidance_embeds=True)
    pipe = Flux2Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(str(out))
    (out / "fluxserve.json").write_text(json.dumps({"native_area": native_area, "max_sequence_length": 32}))
    return out


_FLUX2_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
}
_FLUX2_DOUBLE = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.to_out.0": "img_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "attn.to_add_out": "txt_attn.proj",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
_FLUX2_SINGLE = {
    "attn.to_qkv_mlp_proj": "linear1",
    "attn.to_out": "linear2",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
}


def _kind(stem: str, kind: str) -> str:
    return "scale" if stem.endswith("_norm") and kind == "weight" else kind


def flux2_original_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in the original BFL key layout (as model
    sites and ComfyUI distribute FLUX.2 files): fused qkv, ``.scale`` norms, (shift, scale)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        stem, _, kind = key.rpartition(".")
        if key.startswith("transformer_blocks."):
            _, i, rest = stem.split(".", 2)
            fused = {
                "attn.to_q": ("img_attn.qkv", "attn.to_{}"),
                "attn.add_q_proj": ("txt_attn.qkv", "attn.add_{}_proj"),
            }
            if rest in fused:
                name, pattern = fused[rest]
                parts = [sd[f"transformer_blocks.{i}.{pattern.format(p)}.{kind}"] for p in "qkv"]
                out[f"double_blocks.{i}.{name}.{kind}"] = torch.cat(parts)
            elif rest in _FLUX2_DOUBLE:
                name = _FLUX2_DOUBLE[rest]
                out[f"double_blocks.{i}.{name}.{_kind(name, kind)}"] = value
        elif key.startswith("single_transformer_blocks."):
            _, i, rest = stem.split(".", 2)
            name = _FLUX2_SINGLE[rest]
            out[f"single_blocks.{i}.{name}.{_kind(name, kind)}"] = value
        elif stem == "norm_out.linear":  # diffusers keeps (scale, shift); the original (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
        else:
            out[f"{_FLUX2_TOP[stem]}.{kind}"] = value
    return out


def save_single_file_transformer(pipeline_dir: Path, file: Path) -> Path:
    """The pipeline's FLUX.2 transformer as one original-layout ``.safetensors`` file."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import save_file

    model = Flux2Transformer2DModel.from_pretrained(str(pipeline_dir), subfolder="transformer")
    sd = {k: v.contiguous() for k, v in flux2_original_state_dict(model.state_dict()).items()}
    save_file(sd, str(file))
    return file


def lay_out_hub_cache(hub_cache: Path, repo_id: str, files_from: Path, revision: str = "0" * 40) -> Path:
    """Put a directory's files into a hub cache as ``repo_id`` at ``revision`` (the layout
    huggingface_hub reads offline: ``models--org--name/snapshots/<rev>/...`` and ``refs/main``)."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def save_gguf_transformer(pipeline_dir: Path, file: Path) -> Path:
    """The pipeline's FLUX.2 transformer as one GGUF file (original layout), as GGUF model
    sites ship them: matrices whose rows divide into blocks in Q8_0, the rest in F16/F32."""
    import gguf  # type: ignore[import-untyped]
    import numpy as np
    from diffusers import Flux2Transformer2DModel

    model = Flux2Transformer2DModel.from_pretrained(str(pipeline_dir), subfolder="transformer")
    writer = gguf.GGUFWriter(str(file), "flux")
    for name, tensor in flux2_original_state_dict(model.state_dict()).items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            q8 = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float16 if array.ndim >= 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return file


def make_peft_lora(checkpoint: Path, out: Path, seed: int) -> None:
    """A random LoRA on the attention projections, saved as diffusers saves trained LoRAs."""
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(str(checkpoint / "transformer"))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    transformer.add_adapter(config)
    layers = get_peft_model_state_dict(transformer)
    for key in layers:  # strong enough to show in a few steps
        layers[key] = layers[key] * 3
    tmp = out.parent / f".{out.stem}"
    FluxKontextPipeline.save_lora_weights(str(tmp), transformer_lora_layers=layers)
    (tmp / "pytorch_lora_weights.safetensors").rename(out)
    tmp.rmdir()


def make_kohya_lora(checkpoint: Path, out: Path, seed: int) -> None:
    """A random LoRA in kohya's layout (original FLUX module names), as model sites ship them."""
    import json

    config = json.loads((checkpoint / "transformer" / "config.json").read_text())
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    g = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for block in range(config["num_layers"]):
        for name, (fan_in, fan_out) in {"img_attn_qkv": (dim, 3 * dim), "img_attn_proj": (dim, dim)}.items():
            key = f"lora_unet_double_blocks_{block}_{name}"
            weights[f"{key}.lora_down.weight"] = torch.randn(4, fan_in, generator=g) * 0.5
            weights[f"{key}.lora_up.weight"] = torch.randn(fan_out, 4, generator=g) * 0.5
            weights[f"{key}.alpha"] = torch.tensor(4.0)
    from safetensors.torch import save_file

    save_file(weights, str(out))
