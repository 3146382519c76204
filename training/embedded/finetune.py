"""Go on training the shipped checkpoint's transformer on the CPU (issue 27, point 2).

    python -m training.embedded.finetune --work runs/finetune --steps 3000 --minutes 75
    python -m training.embedded.finetune --work runs/finetune --export runs/finetune/checkpoint

It starts from the checkpoint's transformer and T5 encoder (their fp16 weights, in fp32) and
keeps everything else of it: the autoencoder, the tokenizers, the CLIP encoder, the scheduler.
The latent space is the checkpoint's, so the pool is encoded with the checkpoint's encoder and
normalised with its own shift and scale (``vae/config.json``); a decoder sharpened with
``training.embedded.decoder`` leaves the encoder as it was, so either order works. Stages, each
resumable from ``--work`` (running the same command again goes on where it stopped):

1. pool: :func:`training.embedded.data.build_pool`, with a seed of its own (``--seed``), so the
   scenes are new ones (held-out combinations excluded, as always);
2. caption heads: the parsing heads are not shipped; they are fitted on the frozen T5 encoder
   for ``--head-steps`` first, so the parsing loss (``--text-aux``) starts from heads that read
   the encoder as it is instead of pulling it towards random ones;
3. transformer: :func:`training.embedded.train._train_loop` (rectified flow, the same losses,
   the EMA), its warm-up and cosine schedule over ``--steps``, the state every 500 steps and when
   ``--minutes`` are up;
4. ``--export DIR``: a copy of the checkpoint with the EMA transformer and T5 encoder (fp16) and
   a ``finetune`` entry in ``fluxserve.json``'s ``training``.

Every :class:`~training.embedded.config.Config` field is a flag; unset ones take the
checkpoint's recorded training settings, except the few that a continuation sets otherwise
(``FINETUNE`` below).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.embedded.config import Config
from training.embedded.data import build_pool, label_batch, noisy_caption
from training.embedded.model import CaptionHeads, matmul_attention
from training.embedded.progress import Progress
from training.embedded.scenes import caption, random_scene

# What a continuation changes from the checkpoint's own settings: fresh scenes (another seed), a
# smaller pool (it is built on the same 2 cores), a lower peak learning rate, no single-object
# curriculum (the model is past it).
FINETUNE: dict[str, Any] = {
    "seed": 1,
    "pool_t2i": 44_000,
    "pool_edit": 22_000,
    "steps": 3000,
    "lr": 4e-4,
    "warmup": 100,
    "curriculum": 0.0,
}


def checkpoint_config(checkpoint: Path, overrides: dict[str, Any]) -> Config:
    """The checkpoint's recorded training settings, then :data:`FINETUNE`, then ``overrides``."""
    meta = json.loads((checkpoint / "fluxserve.json").read_text())
    names = {f.name for f in fields(Config)}
    recorded = {k: v for k, v in meta.get("training", {}).items() if k in names}
    return Config(**{**recorded, **FINETUNE, **overrides})


def load_parts(checkpoint: Path) -> tuple[Any, Any, Any]:
    """The checkpoint's autoencoder, the T5 tokenizer, the checkpoint's T5 encoder and
    transformer, in fp32 (the transformer's pooled-vector projection frozen, as
    :func:`~training.embedded.model.make_transformer` does)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import T5EncoderModel

    from fluxserve.embedded.builder import make_t5_tokenizer
    from fluxserve.embedded.vocabulary import BASE_WORDS

    vae = AutoencoderKL.from_pretrained(str(checkpoint / "vae"), torch_dtype=torch.float32).eval()
    # The tokenizer training used (the same vocabulary and ids as the shipped one; it also
    # lower-cases, which the reloaded tokenizer_2 does not, and training captions vary case).
    tok2, _ = make_t5_tokenizer(BASE_WORDS)
    t5 = T5EncoderModel.from_pretrained(str(checkpoint / "text_encoder_2"), torch_dtype=torch.float32)
    transformer = FluxTransformer2DModel.from_pretrained(
        str(checkpoint / "transformer"), torch_dtype=torch.float32
    )
    for p in transformer.time_text_embed.text_embedder.parameters():  # type: ignore[attr-defined]
        p.requires_grad_(False)
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae, tok2, (t5, transformer)


def fit_heads(cfg: Config, t5: Any, heads: CaptionHeads, tok2: Any, steps: int, path: Path) -> None:
    """Stage 2: the caption-parsing heads on the frozen T5 encoder, saved to ``path``."""
    if path.exists():
        heads.load_state_dict(torch.load(path, map_location="cpu"))
        return
    rng = random.Random(cfg.seed * 1000 + 7)
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3, weight_decay=0.0)
    prog = Progress("caption heads", steps)
    cache: dict[tuple[int, ...], list[list[int]]] = {}
    t5.eval()
    for step in range(steps):
        caps = []
        for _ in range(cfg.batch):
            scene = random_scene(rng, 64, 64, rng.choice((1, 2)))
            caps.append(noisy_caption(caption(scene, rng), rng))
        ids = tok2(caps, padding="max_length", max_length=cfg.max_text, truncation=True, return_tensors="pt")
        labels = label_batch(tok2, ids.input_ids, cache)
        with torch.no_grad():
            hidden = t5(ids.input_ids)[0]
        for g in opt.param_groups:
            g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = heads.loss(hidden, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prog.update(step + 1, loss=loss.item())
    torch.save(heads.state_dict(), path)


def train(args: argparse.Namespace, cfg: Config) -> None:
    """Stages 1-3, resumed from ``args.work``."""
    from training.embedded.train import _train_loop

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    stop_at = time.time() + args.minutes * 60
    t0 = time.time()
    device = torch.device("cpu")
    vae, tok2, (t5, transformer) = load_parts(args.checkpoint)
    pool = build_pool(cfg, vae, work, device)
    # The checkpoint's normalisation, not the pool's own estimate: the transformer knows that one.
    pool["shift"], pool["scale"] = float(vae.config.shift_factor), float(vae.config.scaling_factor)
    print(f"[finetune] pool ready after {(time.time() - t0) / 60:.1f} min", flush=True)
    heads = CaptionHeads(cfg.text_dim)
    fit_heads(cfg, t5, heads, tok2, args.head_steps, work / "heads.pt")
    print(f"[finetune] caption heads ready after {(time.time() - t0) / 60:.1f} min", flush=True)
    params = [p for p in list(transformer.parameters()) + list(t5.parameters()) if p.requires_grad]
    params += list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema_t = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    ema_5 = {k: v.detach().clone() for k, v in t5.state_dict().items()}
    start, state_path = 0, work / "transformer_state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location=device)
        transformer.load_state_dict(st["transformer"])
        t5.load_state_dict(st["t5"])
        heads.load_state_dict(st["heads"])
        opt.load_state_dict(st["opt"])
        ema_t, ema_5, start = st["ema_t"], st["ema_5"], st["step"]
        print(f"[finetune] resuming the transformer at step {start}", flush=True)
    if start >= cfg.steps:
        print(f"[finetune] done ({start} steps)", flush=True)
        return
    transformer.train()
    t5.train()
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = matmul_attention  # training only; restored below
    try:
        _train_loop(
            cfg,
            pool,
            device,
            transformer,
            t5,
            heads,
            tok2,
            opt,
            params,
            ema_t,
            ema_5,
            start,
            state_path,
            stop_at,
        )
    finally:
        F.scaled_dot_product_attention = sdpa
    step = torch.load(state_path, map_location=device)["step"]
    print(
        f"[finetune] stopped at step {step}/{cfg.steps} after {(time.time() - t0) / 60:.1f} min", flush=True
    )


def export(args: argparse.Namespace, cfg: Config) -> None:
    """Stage 4: ``args.export`` = the checkpoint with the saved EMA transformer and T5 (fp16)."""
    _, _, (t5, transformer) = load_parts(args.checkpoint)
    st = torch.load(args.work / "transformer_state.pt", map_location="cpu")
    transformer.load_state_dict(st["ema_t"])
    t5.load_state_dict(st["ema_5"])
    out: Path = args.export
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.checkpoint, tmp)
    for name, model in (("transformer", transformer), ("text_encoder_2", t5)):
        shutil.rmtree(tmp / name)
        model.to(torch.float16).save_pretrained(str(tmp / name), safe_serialization=True)
    meta_path = tmp / "fluxserve.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("training", {})["finetune"] = {
        "command": "python -m training.embedded.finetune",
        "steps": st["step"],
        "settings": {k: getattr(cfg, k) for k in (*FINETUNE, "batch", "edit_batch", "edit_fraction", "ema")},
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[finetune] exported {out} (step {st['step']})", flush=True)


def main() -> None:
    """The command line: ``python -m training.embedded.finetune``."""
    from fluxserve.embedded import embedded_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=embedded_checkpoint(), help="the one to go on from")
    ap.add_argument("--work", type=Path, default=Path("runs/finetune"))
    ap.add_argument("--export", type=Path, help="write the checkpoint with the saved EMA weights and stop")
    ap.add_argument("--minutes", type=float, default=75.0, help="stop (resumably) after this long")
    ap.add_argument("--head-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    for f in fields(Config):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    saved = args.work / "config.json"
    if saved.exists():  # a resumed run (and its export) keeps its settings unless told otherwise
        overrides = {**json.loads(saved.read_text()), **overrides}
    cfg = checkpoint_config(args.checkpoint, overrides)
    torch.manual_seed(cfg.seed)
    if args.export:
        export(args, cfg)
    else:
        train(args, cfg)


if __name__ == "__main__":
    main()
