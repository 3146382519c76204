"""Stage 3 of the GPU trainer (``gpu_train``): the transformer and the T5 encoder.

Rectified flow on the frozen autoencoder's latents of scenes drawn on the GPU, as in
:mod:`training.embedded.train`: the curriculum (single objects for the first ``--curriculum``
share of the stage's time), Kontext edit steps, caption dropout, the caption-parsing loss
alongside, EMA weights.
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING, Any

import torch

from training.embedded.data import IGNORE
from training.embedded.gpu_scenes import object_masks, render_batch
from training.embedded.model import image_ids, make_transformer, pack
from training.embedded.state import compact_optimizer, expand_optimizer
from training.embedded.stream import Recipe, scenes_of, token_ids
from training.embedded.train import token_weights

if TYPE_CHECKING:
    from training.embedded.gpu_train import Trainer


def plan(tr: Trainer, base: int) -> Any:
    """The transformer's recipes: single objects during the curriculum, then edits at
    ``--edit-fraction`` (at ``--edit-batch``) and one- and two-object scenes. The phase
    follows the progress when the batch is ordered (a few batches ahead of training)."""
    cfg = tr.cfg

    def recipe(i: int) -> Recipe:
        rng = random.Random(base + i)
        if tr.progress("transformer", cfg.steps) < cfg.curriculum:
            return tr.recipe("t2i", cfg.batch, base + i, singles=True)
        if rng.random() < cfg.edit_fraction:
            return tr.recipe("edit", cfg.edit_batch or cfg.batch, base + i)
        return tr.recipe("t2i", cfg.batch, base + i)

    return recipe


def train_transformer(tr: Trainer) -> None:
    """Stage 3: the transformer and the T5 encoder, from the frozen autoencoder's latents."""
    cfg, run, dev = tr.cfg, tr.run, tr.device
    vae = tr.vae().eval().requires_grad_(False)
    _, _, _, t5, heads = tr.text()
    transformer = make_transformer(cfg)
    if "transformer" in run.weights:
        transformer.load_state_dict(run.weights["transformer"])
        print(f"resuming transformer training at step {run.steps['transformer']}", flush=True)
    transformer.to(dev).train()
    t5.train()
    params = [p for p in list(transformer.parameters()) + list(t5.parameters()) if p.requires_grad]
    params += list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    if "opt" in run.weights:
        opt.load_state_dict(expand_optimizer(run.weights["opt"]))
    ema_t = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    ema_5 = {k: v.detach().clone() for k, v in t5.state_dict().items()}
    if "ema_t" in run.weights:
        ema_t = {k: v.to(dev) for k, v in run.weights["ema_t"].items()}
        ema_5 = {k: v.to(dev) for k, v in run.weights["ema_5"].items()}
    n_params = sum(p.numel() for p in params) - sum(p.numel() for p in heads.parameters())
    print(f"transformer+text parameters: {n_params / 1e6:.2f} M", flush=True)
    model = torch.compile(transformer, dynamic=True) if tr.compile else transformer
    empty = token_ids([""], cfg.max_text).to(dev)
    txt_ids = torch.zeros(cfg.max_text, 3, device=dev)
    pooled = torch.zeros(1, 32, device=dev)
    ids_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def img_ids(lh: int, lw: int, index: int) -> torch.Tensor:
        key = (lh, lw, index)
        if key not in ids_cache:
            ids_cache[key] = image_ids(lh, lw, index, dev)
        return ids_cache[key]

    def parts() -> dict[str, Any]:
        return {
            "transformer": transformer.state_dict(),
            "t5": t5.state_dict(),
            "heads": heads.state_dict(),
            "opt": compact_optimizer(opt.state_dict()),
            "ema_t": ema_t,
            "ema_5": ema_5,
        }

    base = cfg.seed * 1_000_000 + 30_000_000 + run.steps["transformer"] * 7919
    stream = tr.stream(plan(tr, base))
    rate_t, rate_n, wait, last_log = time.monotonic(), 0, 0.0, 0.0
    try:
        while (p := tr.progress("transformer", cfg.steps)) < 1.0 and not tr.out_of_time():
            t = time.monotonic()
            batch = stream.next()
            wait += time.monotonic() - t
            is_edit = batch["kind"] == "edit"
            w, h = batch["w"], batch["h"]
            target = scenes_of(batch["target"], dev)
            with torch.no_grad(), tr.autocast:
                x = render_batch(target, w, h)
                mask = object_masks(x, target.background)
                x0 = (vae.encode(x).latent_dist.mode().float() - run.shift) * run.scale
                if is_edit:
                    source = scenes_of(batch["source"], dev)
                    xs = render_batch(source, w, h)
                    mask = torch.maximum(mask, ((xs - x).abs().sum(1) * 127.5 > 60).float())
                    cond = pack((vae.encode(xs).latent_dist.mode().float() - run.shift) * run.scale)
            ids = torch.from_numpy(batch["ids"]).to(dev)
            labels = torch.from_numpy(batch["labels"]).long().to(dev)
            if cfg.reuse > 1:  # each drawn scene at several noise levels
                x0, mask, ids, labels = (v.repeat_interleave(cfg.reuse, 0) for v in (x0, mask, ids, labels))
                if is_edit:
                    cond = cond.repeat_interleave(cfg.reuse, 0)
            b = x0.shape[0]
            lh, lw = x0.shape[2], x0.shape[3]
            x0p = pack(x0)
            drop = torch.rand(b, device=dev) < cfg.caption_dropout
            ids = torch.where(drop[:, None], empty, ids)
            labels = labels.masked_fill(drop[:, None, None], IGNORE)
            noise = torch.randn_like(x0p)
            sigma = torch.sigmoid(torch.randn(b, device=dev))
            sigma = torch.where(torch.rand(b, device=dev) < cfg.uniform_t, torch.rand(b, device=dev), sigma)
            xt = (1 - sigma[:, None, None]) * x0p + sigma[:, None, None] * noise
            hidden, pos = xt, img_ids(lh, lw, 0)
            if is_edit:
                hidden = torch.cat([xt, cond], 1)
                pos = torch.cat([pos, img_ids(lh, lw, 1)])
            warm = min(1.0, (run.steps["transformer"] + 1) / cfg.warmup)
            lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * p))
            for g in opt.param_groups:
                g["lr"] = lr
            with tr.autocast:
                emb = t5(ids)[0]
                pred = model(
                    hidden_states=hidden,
                    timestep=sigma,
                    guidance=None,
                    pooled_projections=pooled.expand(b, -1),
                    encoder_hidden_states=emb,
                    txt_ids=txt_ids,
                    img_ids=pos,
                    return_dict=False,
                )[0][:, : x0p.shape[1]]
            wts = token_weights(mask, tr.factor, cfg.object_weight)
            loss = (((pred.float() - (noise - x0p)) ** 2).mean(-1) * wts).sum() / wts.sum()
            if cfg.text_aux and not is_edit:
                loss = loss + cfg.text_aux * heads.loss(emb, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step = run.steps["transformer"]
            with torch.no_grad():
                d = min(cfg.ema, (1 + step) / (10 + step))
                for ema, net in ((ema_t, transformer), (ema_5, t5)):
                    pairs = [(ema[k], v) for k, v in net.state_dict().items() if v.dtype.is_floating_point]
                    torch._foreach_lerp_([e for e, _ in pairs], [v.detach() for _, v in pairs], 1 - d)
            run.steps["transformer"] += 1
            tr.stepped = True
            run.samples["transformer"] += b
            rate_n += b
            now = time.monotonic()
            run.elapsed["transformer"] += now - t
            if now - last_log >= 15 or tr.progress("transformer", cfg.steps) >= 1.0:
                last_log = now
                tr.log("transformer", run.steps["transformer"], p, rate_n / (now - rate_t),
                         wait / (now - rate_t), loss=loss.item(), lr=lr, edit=float(is_edit))  # fmt: skip
                rate_t, rate_n, wait = now, 0, 0.0
            tr.maybe_save(parts)
    finally:
        stream.close()
    if tr.progress("transformer", cfg.steps) >= 1.0:
        run.stage = "done"
    tr.save(parts())
