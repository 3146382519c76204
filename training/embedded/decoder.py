"""Sharpen the shipped autoencoder's decoder, the encoder frozen (issue 27, point 1).

    python -m training.embedded.decoder --work runs/decoder --minutes 60
    python -m training.embedded.decoder --work runs/decoder --export src/fluxserve/embedded/checkpoint

The encoder is the shipped checkpoint's and never changes, so the latent space, and with it the
shipped transformer, stays valid: only how latents become pixels improves. The loss weighs
object pixels and, more, the pixels on a colour edge (an object's outline), where a blurred
decoder loses what tells a star from a circle; small objects weigh up to ``--small-boost`` times
more (the smallest are a tenth of the frame's width). ``--layers`` deepens the decoder: each level
gets resnet layers up to that many (``layers_per_block``; the encoder gets them too, as an
identity: their last convolution is zero, and they stay frozen), so ``AutoencoderKL`` keeps its
diffusers layout.

Resumable: the state (weights, optimiser, step, the best round trip so far) is saved to
``--work`` every ``--save-every`` steps and at the end; running the same command again goes on
from it. Every ``--eval-every`` steps the round trip (:func:`training.embedded.evaluate.vae_roundtrip`,
a selection set of its own, seed 7) is scored, and the best weights are kept as ``best.pt``;
``--export`` writes them into a copy of the checkpoint, every other file unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.embedded.config import Config
from training.embedded.data import buckets, object_mask, to_tensor
from training.embedded.evaluate import vae_roundtrip
from training.embedded.precision import autocast
from training.embedded.scenes import Scene, random_scene, render


def shipped_vae(checkpoint: Path) -> Any:
    """The checkpoint's ``AutoencoderKL`` in fp32."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(checkpoint / "vae"), torch_dtype=torch.float32)


def deepen(vae: Any, layers: int | None) -> Any:
    """``vae`` with ``layers`` resnet layers a level (``layers_per_block``; None or no more
    than it has: ``vae`` itself), encoder and decoder. The new layers are appended to each
    block with a zero last convolution, so they start as the identity and the deepened
    autoencoder computes exactly what ``vae`` did."""
    from diffusers import AutoencoderKL

    if layers is None or layers <= vae.config["layers_per_block"]:
        return vae
    cfg = dict(vae.config)
    cfg["layers_per_block"] = layers
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    new: Any = AutoencoderKL(**keep)
    missing, unexpected = new.load_state_dict(vae.state_dict(), strict=False)
    assert not unexpected, unexpected
    old = vae.config["layers_per_block"]
    for blocks, first_new in ((new.encoder.down_blocks, old), (new.decoder.up_blocks, old + 1)):
        for block in blocks:
            for resnet in block.resnets[first_new:]:
                torch.nn.init.zeros_(resnet.conv2.weight)
                torch.nn.init.zeros_(resnet.conv2.bias)
    assert all(".resnets." in k for k in missing), missing
    return new


def edge_mask(x: torch.Tensor) -> torch.Tensor:
    """1.0 on pixels whose 3x3 neighbourhood holds more than one colour (outlines), (b, 1, h, w)."""
    hi = F.max_pool2d(x, 3, 1, 1)
    lo = -F.max_pool2d(-x, 3, 1, 1)
    return ((hi - lo).amax(1, keepdim=True) > 0.2).float()


# The objects the round trip gets wrong most (measured on the bench set: a small star comes back
# as a diamond or a circle four times in five; then small diamonds and medium stars).
HARD = {("star", "small"), ("star", None), ("diamond", "small")}


def hard(scene: Scene) -> bool:
    """Whether ``scene`` holds one of the :data:`HARD` objects."""
    return any((o.shape, o.size) in HARD for o in scene.objects)


def batch(
    rng: random.Random, sizes: list[tuple[int, int]], n: int, boost: float = 1.0, hard_share: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` freshly drawn training scenes of one size, the object mask of each, and a weight
    map that is ``(22 px / diameter)^2`` (clipped to [1, ``boost``]) on each object's disk and
    1 elsewhere: a small star in a 3:7 frame is 10 px across and would weigh little otherwise.
    A ``hard_share`` of the scenes is drawn again until it holds a :data:`HARD` object."""
    w, h = rng.choice(sizes)
    imgs, masks, maps = [], [], []
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for _ in range(n):
        scene = random_scene(rng, w, h, rng.choice((1, 2)))
        if rng.random() < hard_share:
            while not hard(scene):
                scene = random_scene(rng, w, h, rng.choice((1, 2)))
        img = render(scene, w, h)
        imgs.append(to_tensor(img))
        masks.append(torch.from_numpy(object_mask(img, scene.background)))
        m = torch.ones(h, w)
        for o in scene.objects:
            d = o.diameter(w, h)
            disk = (xx - o.cx * w) ** 2 + (yy - o.cy * h) ** 2 <= (d / 2 + 1.5) ** 2
            m[disk] = min(boost, max(1.0, (22.0 / d) ** 2))
        maps.append(m)
    return torch.stack(imgs), torch.stack(masks)[:, None], torch.stack(maps)[:, None]


def better(a: dict[str, float], b: dict[str, float] | None) -> bool:
    """Whether round trip ``a`` beats ``b``: shape first, then everything right."""
    return b is None or (a["shape"], a["all"]) > (b["shape"], b["all"])


def train(args: argparse.Namespace) -> None:
    """Train the decoder until ``--steps`` or ``--minutes``, saving and scoring as it goes."""
    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"
    vae = deepen(shipped_vae(args.checkpoint), args.layers)
    for p in vae.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    step, best, history = 0, None, []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu")
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, history = state["step"], state["best"], state["history"]
        print(f"resumed at step {step} (best so far {best})", flush=True)
    else:
        start = vae_roundtrip(vae.eval(), n=args.eval_n, seed=7)
        history.append({"step": 0, **start})
        print(f"[decoder] step 0 round trip {start}", flush=True)
    (work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    rng = random.Random(1000 + step)
    gen = torch.Generator().manual_seed(2000 + step)
    sizes = buckets(Config())
    t0, last_save, losses, first = time.time(), time.time(), [], step

    def save() -> None:
        torch.save(
            {
                "model": vae.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "best": best,
                "history": history,
            },
            work / "state.tmp",
        )
        (work / "state.tmp").replace(state_path)

    vae.train()
    while step < args.steps and time.time() - t0 < args.minutes * 60:
        x, mask, small = batch(rng, sizes, args.batch, args.small_boost, args.hard_share)
        weight = (1 + args.object_weight * mask + args.edge_weight * edge_mask(x)) * small
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            z = z + args.latent_noise * z.std() * torch.randn(z.shape, generator=gen)
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast("cpu"):
            rec = vae.decode(z).sample
        err = rec.float() - x
        loss = ((err.abs() + err**2) * weight).sum() / (weight.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            rate = (step - first) / max(1e-9, time.time() - t0)
            print(
                f"[decoder] {step}/{args.steps} loss={sum(losses) / len(losses):.4f} lr={lr:.2e} "
                f"{(time.time() - t0) / 60:.1f} min {rate:.2f} it/s",
                flush=True,
            )
            losses = []
        if step % args.eval_every == 0 or step == args.steps:
            rt = vae_roundtrip(vae.eval(), n=args.eval_n, seed=7)
            vae.train()
            history.append({"step": step, **rt})
            print(f"[decoder] step {step} round trip {rt}", flush=True)
            if better(rt, best):
                best = {"step": step, **rt}
                torch.save(vae.state_dict(), work / "best.pt")
            save()
            last_save = time.time()
        elif time.time() - last_save > args.save_every_s:
            save()
            last_save = time.time()
    save()
    print(f"[decoder] stopped at step {step}; best {best}", flush=True)


def export(args: argparse.Namespace) -> None:
    """Write ``best.pt`` (or the latest state with ``--latest``) into ``--export``: a copy of
    ``--checkpoint`` with the new autoencoder (fp16, same scaling and shift factors)."""
    vae = deepen(shipped_vae(args.checkpoint), args.layers)
    if args.latest:
        weights = torch.load(args.work / "state.pt", map_location="cpu")["model"]
    else:
        weights = torch.load(args.work / "best.pt", map_location="cpu")
    vae.load_state_dict(weights)
    out: Path = args.export
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.checkpoint, tmp)
    shutil.rmtree(tmp / "vae")
    vae.to(torch.float16).save_pretrained(str(tmp / "vae"), safe_serialization=True)
    meta_path = tmp / "fluxserve.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("training", {})["decoder_sharpening"] = {
        "command": "python -m training.embedded.decoder",
        "layers_per_block": vae.config["layers_per_block"],
        "state": str(args.work),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"exported {out}", flush=True)


def main() -> None:
    """The command line: ``python -m training.embedded.decoder``."""
    from fluxserve.embedded import embedded_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=embedded_checkpoint(), help="whose encoder is kept")
    ap.add_argument("--work", type=Path, default=Path("runs/decoder"))
    ap.add_argument("--export", type=Path, help="write the best decoder into this checkpoint copy and stop")
    ap.add_argument("--latest", action="store_true", help="export the latest state instead of the best")
    ap.add_argument("--layers", type=int, help="resnet layers a level (default: the checkpoint's)")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--minutes", type=float, default=60.0, help="stop (resumably) after this long")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--edge-weight", type=float, default=10.0)
    ap.add_argument("--small-boost", type=float, default=4.0, help="small objects' most weight (1 = none)")
    ap.add_argument("--latent-noise", type=float, default=0.05)
    ap.add_argument("--hard-share", type=float, default=0.0, help="share of scenes that hold a HARD object")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-n", type=int, default=120)
    ap.add_argument("--save-every-s", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
