"""The embedded model's components, built from a :class:`Config`: autoencoder, text
encoders and tokenizers, transformer, the caption-parsing heads of text pre-training, and the
helpers that lay out FLUX's image tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from training.embedded.config import Config
from training.embedded.data import HEADS, IGNORE


def make_vae(cfg: Config):  # type: ignore[no-untyped-def]
    """The autoencoder, no attention: ``cfg.vae_blocks`` levels (three = 4x downsampling) to
    ``cfg.latent_channels`` channels, ``cfg.vae_layers`` resnet layers a level."""
    from diffusers import AutoencoderKL

    blocks = vae_blocks(cfg)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        block_out_channels=blocks,
        latent_channels=cfg.latent_channels,
        layers_per_block=cfg.vae_layers,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def vae_blocks(cfg: Config) -> tuple[int, ...]:
    """The autoencoder's channels per level, from ``cfg.vae_blocks`` ("16,32,64")."""
    return tuple(int(c) for c in cfg.vae_blocks.split(","))


def vae_factor(cfg: Config) -> int:
    """How many pixels one latent cell spans on a side (4 for three levels)."""
    return 2 ** (len(vae_blocks(cfg)) - 1)


def make_text(cfg: Config, out: Path):  # type: ignore[no-untyped-def]
    """The tokenizers and text encoders, ``(clip_tokenizer, t5_tokenizer, clip, t5)``.

    Both tokenizers know the scene vocabulary's words whole; the CLIP tokenizer's files are
    written to ``out``.
    """
    from fluxserve.embedded.builder import make_clip_tokenizer, make_t5_tokenizer, make_text_encoders
    from fluxserve.embedded.vocabulary import BASE_WORDS

    out.mkdir(parents=True, exist_ok=True)
    tok, clip_vocab = make_clip_tokenizer(BASE_WORDS, out)
    tok2, t5_vocab = make_t5_tokenizer(BASE_WORDS)
    clip, t5 = make_text_encoders(clip_vocab, t5_vocab, cfg.text_dim, cfg.text_layers, buckets=16)
    return tok, tok2, clip, t5


def make_transformer(cfg: Config):  # type: ignore[no-untyped-def]
    """The ``FluxTransformer2DModel``, no guidance embedding, pooled caption vector silenced."""
    from diffusers import FluxTransformer2DModel

    head = cfg.width // cfg.heads
    a = head // 4 // 2 * 2
    b = (head - a) // 2 // 2 * 2
    rope = (a, b, head - a - b)  # even sizes that sum to the head dimension
    t = FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.latent_channels * 4,
        num_layers=cfg.double_blocks,
        num_single_layers=cfg.single_blocks,
        attention_head_dim=head,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=rope,
    )
    # The pooled CLIP vector always enters FLUX's modulation; a zero projection makes it a
    # constant, so the image must read the caption through joint attention (see the spec).
    embedder = t.time_text_embed.text_embedder  # type: ignore[attr-defined]
    proj = embedder.linear_2
    torch.nn.init.zeros_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    for p in embedder.parameters():
        p.requires_grad_(False)
    return t


class CaptionHeads(torch.nn.Module):
    """Linear heads on the T5 encoder's output that predict each token's caption labels.

    Used only in training (caption parsing, see :func:`training.embedded.data.caption_labels`);
    they are not exported.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, sum(HEADS.values()))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of every head; ``IGNORE`` labels do not count."""
        logits = self.proj(hidden.float()).split(list(HEADS.values()), -1)
        return sum(
            (F.cross_entropy(lg.flatten(0, 1), labels[..., j].flatten(), ignore_index=IGNORE)
             for j, lg in enumerate(logits)),
            torch.zeros((), device=hidden.device),
        )  # fmt: skip


def matmul_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,  # type: ignore[no-untyped-def]
    scale=None,
    enable_gqa=False,
):
    """Plain attention: on CPU its backward is about twice as fast as SDPA's at these sizes."""
    s = (query @ key.transpose(-2, -1)) * (scale or query.shape[-1] ** -0.5)
    if attn_mask is not None:
        s = s + attn_mask if attn_mask.dtype != torch.bool else s.masked_fill(~attn_mask, -1e9)
    return s.softmax(-1) @ value


def pack(lat: torch.Tensor) -> torch.Tensor:
    """Latents (b, c, h, w) as FLUX image tokens (b, h/2 * w/2, 4c): 2x2 patches, row-major."""
    b, c, h, w = lat.shape
    lat = lat.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return lat.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int, index: int, device: torch.device) -> torch.Tensor:
    """Rotary position ids of the packed tokens of an h x w latent: (index, row, column).

    Index 0 is the image being generated, 1 a Kontext source image.
    """
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)
