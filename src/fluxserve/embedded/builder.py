"""Build a tiny FLUX Kontext checkpoint from nothing: random weights, local tokenizers.

It has the exact layout of a real FLUX Kontext checkpoint (so the engine loads it the same
way), runs in milliseconds on a CPU, and needs no download. Tests build one; the server uses
one as its default model until a trained checkpoint is configured.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from fluxserve.embedded.vocabulary import BASE_WORDS


def make_clip_tokenizer(words: list[str], tmp: Path):  # type: ignore[no-untyped-def]
    """A CLIP BPE tokenizer that knows ``words`` whole (any other text falls back to single
    characters), and its vocabulary size. Its vocab and merges files are written to ``tmp``."""
    from transformers import CLIPTokenizer

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    add("<|startoftext|>")
    add("<|endoftext|>")
    for c in chars:
        add(c)
        add(c + "</w>")
    merges: list[str] = []
    seen: set[str] = set()
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for p in pieces[1:]:
            merge = f"{cur} {p}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            cur += p
            add(cur)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(tmp / "vocab.json"),
        str(tmp / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    ), len(vocab)


def make_t5_tokenizer(words: list[str]):  # type: ignore[no-untyped-def]
    """A T5 Unigram tokenizer that knows ``words`` whole (any other text falls back to single
    characters; case and punctuation are dropped), and its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in chars]
    pieces += [("\u2581", -3.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    # Case and punctuation carry no meaning in the scene grammar.
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^a-z0-9]+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    ), len(pieces)


def make_text_encoders(clip_vocab: int, t5_vocab: int, t5_dim: int, t5_layers: int, buckets: int = 8):  # type: ignore[no-untyped-def]
    """The two text encoders FLUX pipelines take, tiny.

    A CLIP text model (its pooled output feeds the modulation) and a T5 encoder of width
    ``t5_dim`` (the joint-attention tokens).
    """
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=clip_vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    t5 = T5EncoderModel(
        T5Config(  # type: ignore[call-arg]
            vocab_size=t5_vocab,
            d_model=t5_dim,
            d_ff=t5_dim * 2,
            d_kv=16,
            num_layers=t5_layers,
            num_heads=max(1, t5_dim // 16),
            relative_attention_num_buckets=buckets,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            dropout_rate=0.0,
        )
    )
    return clip, t5


def build_tiny_checkpoint(
    out: Path,
    *,
    seed: int = 0,
    native_area: int = 64 * 64,
    kontext: bool = True,
    words: list[str] | None = None,
) -> Path:
    """Write a randomly initialised tiny FLUX (Kontext) pipeline to ``out`` and return it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    out.mkdir(parents=True, exist_ok=True)
    vocab_words = list(dict.fromkeys(BASE_WORDS + (words or [])))
    tokenizer, clip_vocab = make_clip_tokenizer(vocab_words, out)
    tokenizer_2, t5_vocab = make_t5_tokenizer(vocab_words)
    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = make_text_encoders(clip_vocab, t5_vocab, t5_dim=32, t5_layers=1)
    transformer = FluxTransformer2DModel(
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
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        shift_factor=0.0,
        scaling_factor=1.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    cls = FluxKontextPipeline if kontext else FluxPipeline
    pipe = cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(str(out))  # type: ignore[union-attr]
    (out / "vocab.json").unlink(missing_ok=True)
    (out / "merges.txt").unlink(missing_ok=True)
    (out / "fluxserve.json").write_text(
        json.dumps({"native_area": native_area, "max_sequence_length": 32}, indent=2) + "\n"
    )
    return out


def ensure_tiny_checkpoint(root: Path) -> Path:
    """The default tiny checkpoint under ``root``, built on first use (seed 0)."""
    path = root / "tiny-random-kontext"
    if not (path / "fluxserve.json").exists():
        tmp = root / ".tiny-random-kontext.building"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_checkpoint(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path
