"""Train the embedded model from nothing: data, autoencoder, text encoder and transformer.

    python -m training.embedded.train --work runs/embedded --out src/fluxserve/embedded/checkpoint

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

The same command runs on a GPU (``--device cuda``), but its pool is rendered on one CPU core
first; :mod:`training.embedded.gpu_train` streams fresh batches instead (the GPU plan).
This module holds the stages and the command; the settings are in ``config``, the components
in ``model`` and the data (stage 2) in ``data``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.embedded.config import Config
from training.embedded.data import buckets, build_pool, label_batch, noisy_caption, object_mask, to_tensor
from training.embedded.gpu_scenes import outline
from training.embedded.model import (
    CaptionHeads,
    image_ids,
    make_text,
    make_transformer,
    make_vae,
    matmul_attention,
    pack,
    vae_factor,
)
from training.embedded.precision import autocast
from training.embedded.progress import Progress
from training.embedded.scenes import caption, random_scene, render

# ---------------------------------------------------------------- stage 1: autoencoder


def train_vae(cfg: Config, work: Path, device: torch.device) -> Any:
    """Stage 1: the autoencoder on freshly rendered scenes; saves every 500 steps, resumes."""
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
        with autocast(device.type):
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
        with autocast(device.type):
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


# ---------------------------------------------------------------- stage 2: data.build_pool
# ---------------------------------------------------------------- stage 2b: text encoder


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


def token_weights(mask: torch.Tensor, factor: int, weight: float, edge: float = 0.0) -> torch.Tensor:
    """Per-token loss weights: 1 + (weight - 1) x the token's share of object pixels, + ``edge``
    on every token an object's outline crosses (the outline is what tells a star from a blob; a
    token half on it weighed less than a flat inside one)."""
    m = mask[:, None].float()
    share = F.avg_pool2d(m, factor * 2).flatten(1)
    wts = 1.0 + (weight - 1.0) * share
    if edge:
        crossed = F.max_pool2d(outline(m[:, 0])[:, None], factor * 2).flatten(1) > 0
        wts = wts + edge * crossed.float()
    return wts


def train_transformer(cfg: Config, pool: dict[str, Any], work: Path, device: torch.device):  # type: ignore[no-untyped-def]
    """Stage 3 (with 2b first): the transformer and the T5 encoder, resumed from
    ``work/transformer_state.pt`` if there is one.

    Returns ``(tokenizer, tokenizer_2, clip, t5, transformer)`` with the EMA weights loaded.
    """
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
        F.scaled_dot_product_attention = matmul_attention  # training only; restored below
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
    stop_at: float | None = None,
) -> None:
    """Rectified-flow steps from ``start`` to ``cfg.steps``, saving state every 500 steps.
    Random streams are seeded from the step, so a resumed run continues deterministically.
    With ``stop_at`` (a ``time.time()``), it also stops there, after saving the state."""
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
        with autocast(device.type):
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
        masks = data["masks"][idx].to(device)
        wts = token_weights(masks, vae_factor(cfg), cfg.object_weight, cfg.edge_weight)
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
        out_of_time = stop_at is not None and time.time() > stop_at
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps or out_of_time:
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
        if out_of_time:
            print(f"out of time at step {step + 1}; state saved", flush=True)
            return


# ---------------------------------------------------------------- stage 4: export


def export(cfg: Config, vae: Any, pool: dict[str, Any], parts: Any, out: Path) -> None:
    """Stage 4: write the fp16 ``FluxKontextPipeline`` and its ``fluxserve.json`` to ``out``
    (through a temporary directory, so ``out`` is never half written)."""
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
        "prompt_grammar": "scenes",  # prompts outside the grammar are fitted to it (engine)
        "default_steps": cfg.default_steps,
        "default_guidance": cfg.default_guidance,
        "training": asdict(cfg),
    }
    (tmp / "fluxserve.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    """The command line: ``python -m training.embedded.train`` (every Config field is a flag)."""
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
