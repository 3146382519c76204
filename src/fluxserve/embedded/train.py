"""Train the embedded model from nothing: data, autoencoder, text encoder and transformer.

    python -m fluxserve.embedded.train --work runs/embedded --out src/fluxserve/embedded/checkpoint

Stages (each resumable from ``--work``; rerunning the same command continues where it stopped):
1. autoencoder: an ``AutoencoderKL`` (4x downsampling, 8 latent channels) on rendered scenes;
2. pool: scenes, captions and edit triples rendered at 64x64-area buckets (3:7 .. 7:3) and
   encoded to latents once;
2b. text encoder: the small T5 encoder learns to parse captions (each word predicts the
   colour, shape, size and position of its own object, or the background colour), so the
   transformer gets words already bound to their nouns;
3. transformer: a ``FluxTransformer2DModel`` (the T5 encoder keeps training with it, the parsing
   loss alongside) by rectified flow with logit-normal timesteps (20 % uniform), 10 % caption
   dropout (for classifier-free guidance), a 5x loss weight on object pixels and an EMA of the
   weights. The first 30 % of the steps see single-object scenes only; then two-object scenes
   and Kontext edits (the source image's tokens appended, as FLUX Kontext does) join in;
4. export: a diffusers ``FluxKontextPipeline`` directory + ``fluxserve.json``.

The same command runs on a GPU (``--device cuda``) with larger ``--steps``/``--batch``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fluxserve.embedded.scenes import caption, random_edit, random_scene, render
from fluxserve.embedded.vocabulary import COLOURS, POSITIONS, SHAPES, SYNONYMS
from fluxserve.spec import fit_area

RATIOS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (1, 2), (7, 3), (3, 7))
FILLERS = (
    "a photo of",
    "an image of",
    "beautiful",
    "highly detailed",
    "please draw",
    "minimalist",
    "a picture showing",
    "4k render of",
    "simple flat art,",
)


@dataclass
class Config:
    seed: int = 0
    native_area: int = 64 * 64
    multiple: int = 8  # VAE factor 4 x 2x2 packing
    latent_channels: int = 8
    vae_steps: int = 2000
    vae_batch: int = 32
    decoder_steps: int = 1500
    pool_t2i: int = 66_000
    pool_edit: int = 33_000
    steps: int = 3500
    batch: int = 256
    lr: float = 8e-4
    warmup: int = 100
    edit_fraction: float = 0.4
    edit_batch: int = 128  # batch of an edit step (0 = --batch); edit steps carry twice the tokens
    curriculum: float = 0.3  # share of the steps, at the start, on single-object scenes only
    uniform_t: float = 0.2  # share of timesteps drawn uniformly instead of logit-normal
    text_steps: int = 1000  # caption-parsing pre-training steps of the text encoder (stage 2b)
    text_aux: float = 0.5  # weight of the caption-parsing loss while the transformer trains
    caption_dropout: float = 0.1
    object_weight: float = 5.0
    ema: float = 0.999
    width: int = 128
    heads: int = 4
    double_blocks: int = 2
    single_blocks: int = 2
    text_dim: int = 64
    text_layers: int = 2
    max_text: int = 32
    default_steps: int = 16
    default_guidance: float = 4.0


def buckets(cfg: Config) -> list[tuple[int, int]]:
    """Training sizes: the native sizes the engine will sample at (the same rule)."""
    return [fit_area(a, b, cfg.native_area, cfg.multiple) for a, b in RATIOS]


def to_tensor(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return a / 127.5 - 1.0


def object_mask(img: Image.Image, background: str) -> np.ndarray:
    a = np.asarray(img, dtype=np.int16)
    bg = np.array(COLOURS[background], dtype=np.int16)
    return (np.abs(a - bg).sum(-1) > 60).astype(np.float32)


def noisy_caption(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.1:
        text = f"{rng.choice(FILLERS)} {text}"
    elif r < 0.15:
        text = text.upper() if rng.random() < 0.5 else text.capitalize() + "."
    return text


class Progress:
    def __init__(self, name: str, total: int, start: int = 0) -> None:
        self.name, self.total, self.start, self.t0 = name, total, start, time.time()
        self.last = 0.0

    def update(self, i: int, **info: float) -> None:
        now = time.time()
        if now - self.last < 10 and i < self.total:
            return
        self.last = now
        done = i - self.start
        rate = done / max(1e-9, now - self.t0)
        eta = (self.total - i) / max(rate, 1e-9)
        extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        print(
            f"[{self.name}] {i}/{self.total} ({100 * i / self.total:.1f}%) "
            f"{rate:.2f} it/s eta {eta / 60:.1f} min {extra}",
            flush=True,
        )


# ---------------------------------------------------------------- components


def make_vae(cfg: Config):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=(16, 32, 64),
        latent_channels=cfg.latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def make_text(cfg: Config, out: Path):  # type: ignore[no-untyped-def]
    from fluxserve.embedded.builder import make_clip_tokenizer, make_t5_tokenizer, make_text_encoders
    from fluxserve.embedded.vocabulary import BASE_WORDS

    out.mkdir(parents=True, exist_ok=True)
    tok, clip_vocab = make_clip_tokenizer(BASE_WORDS, out)
    tok2, t5_vocab = make_t5_tokenizer(BASE_WORDS)
    clip, t5 = make_text_encoders(clip_vocab, t5_vocab, cfg.text_dim, cfg.text_layers, buckets=16)
    return tok, tok2, clip, t5


def make_transformer(cfg: Config):  # type: ignore[no-untyped-def]
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


# ---------------------------------------------------------------- stage 1: autoencoder


def train_vae(cfg: Config, work: Path, device: torch.device) -> Any:
    vae = make_vae(cfg).to(device)
    path = work / "vae.pt"
    if (work / "vae.done").exists():
        vae.load_state_dict(torch.load(path, map_location=device))
        return vae.eval()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = 0
    if path.exists():
        state = torch.load(work / "vae_state.pt", map_location=device)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    rng = random.Random(cfg.seed * 1000 + 1 + start)
    sizes = buckets(cfg)
    prog = Progress("autoencoder", cfg.vae_steps, start)
    vae.train()
    for step in range(start, cfg.vae_steps):
        w, h = rng.choice(sizes)
        imgs = []
        for _ in range(cfg.vae_batch):
            scene = random_scene(rng, w, h, rng.choice((1, 2)))
            imgs.append(to_tensor(render(scene, w, h)))
        x = torch.stack(imgs).to(device)
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16):
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample
        loss = F.l1_loss(rec.float(), x) + F.mse_loss(rec.float(), x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prog.update(step + 1, loss=loss.item())
        if (step + 1) % 500 == 0 or step + 1 == cfg.vae_steps:
            torch.save(
                {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, work / "vae_state.pt"
            )
            torch.save(vae.state_dict(), path)
    (work / "vae.done").touch()
    return vae.eval()


def refine_decoder(cfg: Config, vae: Any, work: Path, device: torch.device) -> Any:
    """Stage 1b: sharpen the decoder with the encoder frozen. The latent space (and so the data
    pool and the transformer) is unchanged; small objects and exact colours decode better.
    Object pixels weigh 5x; the latents get a little noise, as generated latents are not
    exact."""
    done, path = work / "decoder.done", work / "vae_refined.pt"
    if done.exists():
        vae.load_state_dict(torch.load(path, map_location=device))
        return vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    rng = random.Random(cfg.seed * 1000 + 5)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 6)
    sizes = buckets(cfg)
    prog = Progress("decoder", cfg.decoder_steps)
    vae.train()
    for step in range(cfg.decoder_steps):
        w, h = rng.choice(sizes)
        imgs, masks = [], []
        for _ in range(cfg.vae_batch):
            scene = random_scene(rng, w, h, rng.choice((1, 2)))
            img = render(scene, w, h)
            imgs.append(to_tensor(img))
            masks.append(torch.from_numpy(object_mask(img, scene.background)))
        x = torch.stack(imgs).to(device)
        weight = (1 + 4 * torch.stack(masks).to(device))[:, None]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            z = z + 0.05 * z.std() * torch.randn(z.shape, generator=gen).to(device)
        for g in opt.param_groups:
            g["lr"] = 5e-4 * 0.5 * (1 + math.cos(math.pi * step / cfg.decoder_steps))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            rec = vae.decode(z).sample
        err = rec.float() - x
        loss = ((err.abs() + err**2) * weight).sum() / (weight.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prog.update(step + 1, loss=loss.item())
    torch.save(vae.state_dict(), path)
    done.touch()
    return vae.eval()


# ---------------------------------------------------------------- stage 2: data pool


@torch.no_grad()
def encode(vae: Any, imgs: list[Image.Image], device: torch.device) -> torch.Tensor:
    x = torch.stack([to_tensor(i) for i in imgs]).to(device)
    return vae.encode(x).latent_dist.mode().float().cpu()


def build_pool(cfg: Config, vae: Any, work: Path, device: torch.device) -> dict[str, Any]:
    path = work / "pool.pt"
    if path.exists():
        return torch.load(path)  # type: ignore[no-any-return]
    rng = random.Random(cfg.seed * 1000 + 2)
    sizes = buckets(cfg)
    pool: dict[str, Any] = {"t2i": {}, "edit": {}}
    total = cfg.pool_t2i + cfg.pool_edit
    prog = Progress("data", total)
    done = 0
    per_bucket_t2i = cfg.pool_t2i // len(sizes)
    per_bucket_edit = cfg.pool_edit // len(sizes)
    chunk = 256
    for w, h in sizes:
        caps, lats, masks = [], [], []
        for i0 in range(0, per_bucket_t2i, chunk):
            imgs = []
            for _ in range(min(chunk, per_bucket_t2i - i0)):
                scene = random_scene(rng, w, h, 1 if rng.random() < 0.45 else 2)
                img = render(scene, w, h)
                imgs.append(img)
                caps.append(noisy_caption(caption(scene, rng), rng))
                masks.append(object_mask(img, scene.background))
            lats.append(encode(vae, imgs, device).half())
            done += len(imgs)
            prog.update(done)
        pool["t2i"][(w, h)] = {
            "captions": caps,
            "latents": torch.cat(lats),
            "masks": torch.from_numpy(np.stack(masks)).half(),
        }
        caps, src_l, tgt_l, masks = [], [], [], []
        n = 0
        while n < per_bucket_edit:
            srcs: list[Image.Image] = []
            tgts: list[Image.Image] = []
            while len(srcs) < min(chunk, per_bucket_edit - n):
                src = random_scene(rng, w, h, rng.choice((1, 2)))
                edit = random_edit(rng, src, w, h)
                if edit is None:
                    continue
                text, tgt = edit
                srcs.append(render(src, w, h))
                timg = render(tgt, w, h)
                tgts.append(timg)
                caps.append(noisy_caption(text, rng))
                # weight both what changed and the objects of the result
                diff = (
                    np.abs(np.asarray(srcs[-1], np.int16) - np.asarray(timg, np.int16)).sum(-1) > 60
                ).astype(np.float32)
                masks.append(np.maximum(diff, object_mask(timg, tgt.background)))
            src_l.append(encode(vae, srcs, device).half())
            tgt_l.append(encode(vae, tgts, device).half())
            n += len(srcs)
            done += len(srcs)
            prog.update(done)
        pool["edit"][(w, h)] = {
            "captions": caps,
            "source": torch.cat(src_l),
            "latents": torch.cat(tgt_l),
            "masks": torch.from_numpy(np.stack(masks)).half(),
        }
    all_lat = torch.cat([b["latents"][:2000].float().flatten() for b in pool["t2i"].values()])
    pool["shift"] = float(all_lat.mean())
    pool["scale"] = float(1.0 / all_lat.std())
    torch.save(pool, path)
    return pool


# ---------------------------------------------------------------- stage 2b: text encoder

# A real FLUX gets a T5 that already knows language. Ours starts from nothing, and learning
# which colour word belongs to which noun only through the image loss is slow (a model trained
# that way drew "a red circle on a blue background" and "a blue circle on a red background"
# alike). So the text encoder first learns to parse captions: every word of an object's phrase
# predicts that object's colour, shape, size and position, and the words of "on a <colour>
# background" predict the background colour. The heads are dropped at export.

COLOUR_LIST = list(COLOURS)
POSITION_LIST = [*POSITIONS, "anywhere"]
SIZE_LIST = ["small", "medium", "large"]
HEADS = {
    "role": 4,
    "colour": len(COLOUR_LIST),
    "shape": len(SHAPES),
    "size": len(SIZE_LIST),
    "position": len(POSITION_LIST),
}
IGNORE = -100


def caption_labels(pieces: list[str]) -> list[list[int]]:
    """Per token [role, colour, shape, size, position] for a tokenised caption (roles: 0 other
    word, 1 first object, 2 second object, 3 background; ``IGNORE`` where nothing applies)."""
    labels = [[IGNORE] * 5 for _ in pieces]
    words: list[tuple[int, str]] = []
    for i, p in enumerate(pieces):
        if p in ("</s>", "<pad>"):
            continue
        labels[i][0] = 0
        if p.startswith("\u2581") and len(p) > 1:
            words.append((i, SYNONYMS.get(p[1:], p[1:])))
    seq = [w for _, w in words]
    end = len(seq)
    if "background" in seq:
        b = len(seq) - 1 - seq[::-1].index("background")
        if b > 0 and seq[b - 1] in COLOURS:
            start = b - 1
            start -= start > 0 and seq[start - 1] in ("a", "an")
            start -= start > 0 and seq[start - 1] == "on"
            for k in range(start, b + 1):
                labels[words[k][0]] = [3, COLOUR_LIST.index(seq[b - 1]), IGNORE, IGNORE, IGNORE]
            end = start
    bounds, s0 = [], 0
    for k in range(end + 1):
        if k == end or seq[k] == "and":
            bounds.append((s0, k))
            s0 = k + 1
    for n, (a, b) in enumerate(bounds[:2]):
        ws = seq[a:b]
        colours = [w for w in ws if w in COLOURS]
        shapes = [w for w in ws if w in SHAPES]
        if not colours or not shapes:
            continue
        after = ws[ws.index(shapes[0]) + 1 :]
        phrase = " ".join(after)
        size = "small" if "small" in ws else "large" if "large" in ws else "medium"
        lab = [
            n + 1,
            COLOUR_LIST.index(colours[0]),
            SHAPES.index(shapes[0]),
            SIZE_LIST.index(size),
            POSITION_LIST.index(phrase) if phrase in POSITIONS else POSITION_LIST.index("anywhere"),
        ]
        for k in range(a, b):
            labels[words[k][0]] = list(lab)
    return labels


class CaptionHeads(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, sum(HEADS.values()))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden.float()).split(list(HEADS.values()), -1)
        return sum(
            (F.cross_entropy(lg.flatten(0, 1), labels[..., j].flatten(), ignore_index=IGNORE)
             for j, lg in enumerate(logits)),
            torch.zeros((), device=hidden.device),
        )  # fmt: skip


def label_batch(
    tok2: Any, input_ids: torch.Tensor, cache: dict[tuple[int, ...], list[list[int]]]
) -> torch.Tensor:
    rows = []
    for ids in input_ids.tolist():
        key = tuple(ids)
        if key not in cache:
            cache[key] = caption_labels(tok2.convert_ids_to_tokens(ids))
        rows.append(cache[key])
    return torch.tensor(rows)


def pretrain_text(
    cfg: Config, t5: Any, heads: CaptionHeads, tok2: Any, work: Path, device: torch.device
) -> None:
    """Stage 2b: caption parsing (no images), on freshly drawn captions."""
    path = work / "text.pt"
    if path.exists():
        st = torch.load(path, map_location=device)
        t5.load_state_dict(st["t5"])
        heads.load_state_dict(st["heads"])
        return
    rng = random.Random(cfg.seed * 1000 + 7)
    params = list(t5.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    prog = Progress("text encoder", cfg.text_steps)
    cache: dict[tuple[int, ...], list[list[int]]] = {}
    for step in range(cfg.text_steps):
        caps = []
        for _ in range(cfg.batch):
            scene = random_scene(rng, 64, 64, rng.choice((1, 2)))
            caps.append(noisy_caption(caption(scene, rng), rng))
        ids = tok2(caps, padding="max_length", max_length=cfg.max_text, truncation=True, return_tensors="pt")
        labels = label_batch(tok2, ids.input_ids, cache).to(device)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / cfg.text_steps))
        loss = heads.loss(t5(ids.input_ids.to(device))[0], labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prog.update(step + 1, loss=loss.item())
    torch.save({"t5": t5.state_dict(), "heads": heads.state_dict()}, path)


# ---------------------------------------------------------------- stage 3: transformer


def _matmul_attention(
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
    b, c, h, w = lat.shape
    lat = lat.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return lat.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int, index: int, device: torch.device) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


def token_weights(mask: torch.Tensor, factor: int, weight: float) -> torch.Tensor:
    """Per-token loss weights: 1 + (weight - 1) x the token's share of object pixels."""
    share = F.avg_pool2d(mask[:, None].float(), factor * 2).flatten(1)
    return 1.0 + (weight - 1.0) * share


def train_transformer(cfg: Config, pool: dict[str, Any], work: Path, device: torch.device):  # type: ignore[no-untyped-def]
    tok, tok2, clip, t5 = make_text(cfg, work / "tokenizers")
    transformer = make_transformer(cfg).to(device)
    t5 = t5.to(device)
    heads = CaptionHeads(cfg.text_dim).to(device)
    state_path = work / "transformer_state.pt"
    if cfg.text_steps and not state_path.exists():
        pretrain_text(cfg, t5, heads, tok2, work, device)
    params = [p for p in list(transformer.parameters()) + list(t5.parameters()) if p.requires_grad]
    params += list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema_t = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    ema_5 = {k: v.detach().clone() for k, v in t5.state_dict().items()}
    start = 0
    if state_path.exists():
        st = torch.load(state_path, map_location=device)
        transformer.load_state_dict(st["transformer"])
        t5.load_state_dict(st["t5"])
        if "heads" in st:
            heads.load_state_dict(st["heads"])
        opt.load_state_dict(st["opt"])
        ema_t, ema_5, start = st["ema_t"], st["ema_5"], st["step"]
        print(f"resuming transformer training at step {start}", flush=True)
    n_params = sum(p.numel() for p in params) - sum(p.numel() for p in heads.parameters())
    print(f"transformer+text parameters: {n_params / 1e6:.2f} M", flush=True)
    transformer.train()
    t5.train()
    sdpa = F.scaled_dot_product_attention
    if device.type == "cpu":
        F.scaled_dot_product_attention = _matmul_attention  # training only; restored below
    try:
        _train_loop(
            cfg, pool, device, transformer, t5, heads, tok2, opt, params, ema_t, ema_5, start, state_path
        )
    finally:
        F.scaled_dot_product_attention = sdpa
    st = torch.load(state_path, map_location=device)
    transformer.load_state_dict(st["ema_t"])
    t5.load_state_dict(st["ema_5"])
    return tok, tok2, clip, t5.eval(), transformer.eval()


def _train_loop(
    cfg: Config,
    pool: dict[str, Any],
    device: torch.device,
    transformer: Any,
    t5: Any,
    heads: CaptionHeads,
    tok2: Any,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    ema_t: dict[str, torch.Tensor],
    ema_5: dict[str, torch.Tensor],
    start: int,
    state_path: Path,
) -> None:
    """Rectified-flow steps from ``start`` to ``cfg.steps``, saving state every 500 steps.
    Random streams are seeded from the step, so a resumed run continues deterministically."""
    shift, scale = pool["shift"], pool["scale"]
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3 + start)
    rng = random.Random(cfg.seed * 1000 + 4 + start)
    sizes = list(pool["t2i"])
    singles = {
        size: torch.tensor([i for i, c in enumerate(b["captions"]) if " and " not in c])
        for size, b in pool["t2i"].items()
    }
    txt_ids = torch.zeros(cfg.max_text, 3, device=device)
    label_cache: dict[tuple[int, ...], list[list[int]]] = {}
    prog = Progress("transformer", cfg.steps, start)
    for step in range(start, cfg.steps):
        w, h = rng.choice(sizes)
        first = step < cfg.curriculum * cfg.steps
        is_edit = not first and rng.random() < cfg.edit_fraction
        data = pool["edit" if is_edit else "t2i"][(w, h)]
        batch = (cfg.edit_batch or cfg.batch) if is_edit else cfg.batch
        if first and len(singles[(w, h)]):
            idx = singles[(w, h)][torch.randint(len(singles[(w, h)]), (batch,), generator=gen)]
        else:
            idx = torch.randint(len(data["captions"]), (batch,), generator=gen)
        caps = [data["captions"][i] if rng.random() >= cfg.caption_dropout else "" for i in idx.tolist()]
        x0 = (data["latents"][idx].float().to(device) - shift) * scale
        lh, lw = x0.shape[2], x0.shape[3]
        x0p = pack(x0)
        noise = torch.randn(x0p.shape, generator=gen).to(device)
        sigma = torch.sigmoid(torch.randn(batch, generator=gen))
        uniform = torch.rand(batch, generator=gen)
        sigma = torch.where(torch.rand(batch, generator=gen) < cfg.uniform_t, uniform, sigma).to(device)
        xt = (1 - sigma[:, None, None]) * x0p + sigma[:, None, None] * noise
        ids = image_ids(lh, lw, 0, device)
        hidden = xt
        if is_edit:
            cond = pack((data["source"][idx].float().to(device) - shift) * scale)
            hidden = torch.cat([xt, cond], 1)
            ids = torch.cat([ids, image_ids(lh, lw, 1, device)])
        input_ids = tok2(
            caps, padding="max_length", max_length=cfg.max_text, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        warm = min(1.0, (step + 1) / cfg.warmup)
        lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16):
            emb = t5(input_ids)[0]
            pred = transformer(
                hidden_states=hidden,
                timestep=sigma,
                guidance=None,
                pooled_projections=torch.zeros(batch, 32, device=device),
                encoder_hidden_states=emb,
                txt_ids=txt_ids,
                img_ids=ids,
                return_dict=False,
            )[0][:, : x0p.shape[1]]
        target = noise - x0p
        wts = token_weights(data["masks"][idx].to(device), 4, cfg.object_weight)
        loss = (((pred.float() - target) ** 2).mean(-1) * wts).sum() / wts.sum()
        if cfg.text_aux and not is_edit:
            labels = label_batch(tok2, input_ids.cpu(), label_cache).to(device)
            loss = loss + cfg.text_aux * heads.loss(emb, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(cfg.ema, (1 + step) / (10 + step))
            for ema, model in ((ema_t, transformer), (ema_5, t5)):
                pairs = [(ema[k], v) for k, v in model.state_dict().items() if v.dtype.is_floating_point]
                torch._foreach_lerp_([e for e, _ in pairs], [v.detach() for _, v in pairs], 1 - d)
        prog.update(step + 1, loss=loss.item(), lr=lr)
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps:
            torch.save(
                {
                    "transformer": transformer.state_dict(),
                    "t5": t5.state_dict(),
                    "heads": heads.state_dict(),
                    "opt": opt.state_dict(),
                    "ema_t": ema_t,
                    "ema_5": ema_5,
                    "step": step + 1,
                },
                state_path,
            )


# ---------------------------------------------------------------- stage 4: export


def export(cfg: Config, vae: Any, pool: dict[str, Any], parts: Any, out: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    tok, tok2, clip, t5, transformer = parts
    tok2.backend_tokenizer.no_padding()  # save the tokenizer without the last call's state
    tok2.backend_tokenizer.no_truncation()
    vae.register_to_config(shift_factor=pool["shift"], scaling_factor=pool["scale"])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxKontextPipeline(
        scheduler=scheduler,
        vae=vae.cpu(),
        text_encoder=clip,
        tokenizer=tok,
        text_encoder_2=t5.cpu(),
        tokenizer_2=tok2,
        transformer=transformer.cpu(),
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16)  # type: ignore[attr-defined]
    pipe.save_pretrained(str(tmp), safe_serialization=True)  # type: ignore[attr-defined]
    for name in ("vocab.json", "merges.txt"):
        (tmp / name).unlink(missing_ok=True)
    meta = {
        "native_area": cfg.native_area,
        "max_sequence_length": cfg.max_text,
        "true_cfg": True,
        "default_steps": cfg.default_steps,
        "default_guidance": cfg.default_guidance,
        "training": asdict(cfg),
    }
    (tmp / "fluxserve.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/embedded"))
    ap.add_argument("--out", type=Path, default=Path("src/fluxserve/embedded/checkpoint"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--export-now",
        action="store_true",
        help="export the latest saved state (EMA weights) without training further",
    )
    for field, value in asdict(Config()).items():
        ap.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args()
    cfg = Config(**{k: getattr(args, k) for k in asdict(Config())})
    torch.manual_seed(cfg.seed)
    device = torch.device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t0 = time.time()
    vae = train_vae(cfg, args.work, device)
    print(f"autoencoder ready after {(time.time() - t0) / 60:.1f} min", flush=True)
    pool = build_pool(cfg, vae, args.work, device)
    print(f"data ready after {(time.time() - t0) / 60:.1f} min", flush=True)
    vae = refine_decoder(cfg, vae, args.work, device)
    print(f"decoder refined after {(time.time() - t0) / 60:.1f} min", flush=True)
    if args.export_now:
        saved = torch.load(args.work / "transformer_state.pt", map_location=device)["step"]
        cfg = Config(**{**asdict(cfg), "steps": saved})
    parts = train_transformer(cfg, pool, args.work, device)
    print(f"transformer ready after {(time.time() - t0) / 60:.1f} min", flush=True)
    export(cfg, vae, pool, parts, args.out)
    print(f"exported {args.out} after {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
