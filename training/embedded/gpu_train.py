"""Train the embedded model on a GPU from freshly drawn batches, in time-budgeted stages.

    python -m training.embedded.gpu_train --device cuda --out $OUT --resume runs/gpu \\
        --vae-minutes 4 --text-minutes 0.75 --transformer-minutes 15.5 --stop-after 8.3 [Config flags]

Nothing is pre-rendered: CPU worker processes (:mod:`training.embedded.stream`) draw scenes,
captions and edit instructions with the grammar's own code, and the GPU draws the images
(:mod:`training.embedded.gpu_scenes`) and encodes them with the autoencoder on the fly. Stages:

1. ``vae``: the autoencoder, object pixels and outlines weighted (``--vae-object-weight``,
   ``--vae-edge-weight``); the last ``--vae-refine`` share of its time trains the decoder alone
   on slightly noised latents. At the end: the latents' shift and scale, and the round trip's
   evaluator figures (the ceiling of the transformer), printed and kept in ``state.json``;
2. ``text``: the T5 encoder learns to parse captions (as ``train.pretrain_text``);
3. ``transformer``: rectified flow as in ``train``, with the curriculum (single objects for the
   first ``--curriculum`` share of its time), Kontext edit steps, caption dropout, the
   parsing loss alongside and EMA weights; bf16 autocast, optionally ``torch.compile``;
4. export: the ``FluxKontextPipeline`` directory as ``checkpoint.tar`` in ``--out`` (and as a
   directory with ``--export DIR``).

A stage's schedule (learning rate, curriculum) follows its progress, the larger of its share of
``--*-minutes`` spent and of its step cap (``--vae-steps``, ``--text-steps``, ``--steps``)
reached. The state (``training.embedded.state``) goes to ``--out`` every ``--save-every``
minutes, at every stage's end and when ``--stop-after`` minutes of this command are up (or
the stage ``--until`` is reached); the next command continues from the newest state among
``--resume`` directories and ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.embedded.config import Config
from training.embedded.data import buckets
from training.embedded.gpu_run import SHAPE_FIELDS, STAGES, Budget, Run, cpu_copy, newest_state
from training.embedded.gpu_scenes import object_masks, outline, render_batch
from training.embedded.gpu_transformer import train_transformer
from training.embedded.model import CaptionHeads, make_text, make_transformer, make_vae, vae_factor
from training.embedded.state import compact_optimizer, expand_optimizer, load_state, save_state
from training.embedded.stream import BatchStream, Recipe, make_batch, scenes_of, worker_pool
from training.embedded.train import export

__all__ = ["Budget", "Run", "Trainer", "main", "newest_state"]

VAE_LR = 1e-3
TEXT_LR = 1e-3


class Trainer:
    """Runs the stages of one command: resumes, trains within the budget, saves, exports."""

    def __init__(
        self,
        run: Run,
        budget: Budget,
        out: Path,
        device: torch.device,
        workers: int = 0,
        compile_: bool = False,
        roundtrip_n: int = 120,
    ) -> None:
        self.run, self.budget, self.out, self.device = run, budget, out, device
        self.workers, self.compile, self.roundtrip_n = workers, compile_, roundtrip_n
        self.pool: ProcessPoolExecutor | None = None
        self.stepped = False  # whether this command has taken a training step
        self.t0 = time.monotonic()
        self.last_save = self.t0
        self.cfg = run.cfg
        self.sizes = buckets(self.cfg)
        self.factor = vae_factor(self.cfg)
        if self.cfg.multiple != self.factor * 2:
            raise ValueError(f"--multiple must be {self.factor * 2} for --vae-blocks {self.cfg.vae_blocks}")
        # bf16 on the GPU; on a CPU (smoke tests) bf16 convolutions are slower than fp32
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.tokdir = Path(tempfile.mkdtemp(prefix="fluxserve-tok-"))

    # ------------------------------------------------------------ bookkeeping

    def out_of_time(self) -> bool:
        """Whether this command has used its ``--stop-after`` minutes (never before its first
        step: every command makes progress)."""
        return self.stepped and time.monotonic() - self.t0 >= self.budget.stop_after * 60

    def progress(self, stage: str, cap: int) -> float:
        """The stage's progress in [0, 1]: time spent or steps taken, whichever is further."""
        minutes = getattr(self.budget, stage)
        by_time = self.run.elapsed[stage] / (minutes * 60) if minutes > 0 else 1.0
        return max(by_time, self.run.steps[stage] / max(1, cap))

    def save(self, parts: dict[str, Any]) -> None:
        """Write the state (with ``parts``' current weights) to ``--out``."""
        self.run.weights.update(cpu_copy(parts))
        t = time.monotonic()
        n = save_state(self.run.to_state(), self.out, self.run.summary())
        self.last_save = time.monotonic()
        print(f"[state] saved {n / 2**20:.1f} MiB to {self.out} in {self.last_save - t:.1f} s "
              f"(stage {self.run.stage})", flush=True)  # fmt: skip

    def maybe_save(self, parts: Callable[[], dict[str, Any]]) -> None:
        """Save ``parts()`` if ``--save-every`` minutes passed since the last save."""
        if time.monotonic() - self.last_save >= self.budget.save_every * 60:
            self.save(parts())

    def log(self, stage: str, step: int, p: float, rate: float, wait: float, **info: float) -> None:
        """One progress line."""
        extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        print(
            f"[{stage}] step {step} {100 * p:.1f}% {self.run.elapsed[stage] / 60:.2f} min "
            f"{rate:.0f} samples/s data-wait {100 * wait:.0f}% {extra}",
            flush=True,
        )

    def stream(self, plan: Any) -> BatchStream:
        """Batches of ``plan`` drawn by the workers (one pool for every stage)."""
        if self.workers and self.pool is None:
            self.pool = worker_pool(self.workers)
        return BatchStream(plan, self.pool, ahead=4 * self.workers)

    def close(self) -> None:
        """Stop the worker processes."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    # ------------------------------------------------------------ models

    def vae(self) -> Any:
        """The autoencoder with the run's weights (if any) on the device."""
        vae = make_vae(self.cfg)
        if "vae" in self.run.weights:
            vae.load_state_dict(self.run.weights["vae"])
        return vae.to(self.device)

    def text(self) -> tuple[Any, Any, Any, Any, CaptionHeads]:
        """``(tokenizer, tokenizer_2, clip, t5, heads)`` with the run's weights (if any)."""
        tok, tok2, clip, t5 = make_text(self.cfg, self.tokdir)
        heads = CaptionHeads(self.cfg.text_dim)
        if "t5" in self.run.weights:
            t5.load_state_dict(self.run.weights["t5"])
            heads.load_state_dict(self.run.weights["heads"])
        return tok, tok2, clip, t5.to(self.device), heads.to(self.device)

    def recipe(self, kind: str, batch: int, seed: int, singles: bool = False) -> Recipe:
        """A recipe at a random training size (the seed picks it)."""
        w, h = random.Random(seed).choice(self.sizes)
        return Recipe(kind, w, h, batch, seed, singles, self.cfg.wild_captions, self.cfg.max_text)

    # ------------------------------------------------------------ stage 1

    def train_vae(self) -> None:
        """Stage 1: the autoencoder (then shift, scale and the round-trip figures)."""
        cfg, run = self.cfg, self.run
        vae = self.vae().train()
        opt = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
        if "vae_opt" in run.weights:
            opt.load_state_dict(expand_optimizer(run.weights["vae_opt"]))
        base = cfg.seed * 1_000_000 + 10_000_000 + run.steps["vae"] * 7919
        stream = self.stream(lambda i: self.recipe("t2i", cfg.vae_batch, base + i))
        rate_t, rate_n, wait = time.monotonic(), 0, 0.0
        last_log = 0.0
        try:
            while (p := self.progress("vae", cfg.vae_steps)) < 1.0 and not self.out_of_time():
                t = time.monotonic()
                batch = stream.next()
                wait += time.monotonic() - t
                scenes = scenes_of(batch["target"], self.device)
                x = render_batch(scenes, batch["w"], batch["h"])
                mask = object_masks(x, scenes.background)
                weight = (1 + cfg.vae_object_weight * mask + cfg.vae_edge_weight * outline(mask))[:, None]
                refine = p >= 1 - cfg.vae_refine
                warm = min(1.0, (run.steps["vae"] + 1) / 100)
                for g in opt.param_groups:
                    g["lr"] = VAE_LR * warm * 0.5 * (1 + math.cos(math.pi * p))
                with self.autocast:
                    if refine:  # decoder only; the latent space stays as it is
                        with torch.no_grad():
                            z = vae.encode(x).latent_dist.mode()
                            z = z + 0.05 * z.std() * torch.randn_like(z)
                        kl = torch.zeros((), device=self.device)
                    else:
                        post = vae.encode(x).latent_dist
                        z, kl = post.sample(), post.kl().mean()
                    rec = vae.decode(z).sample
                err = rec.float() - x
                loss = ((err.abs() + err**2) * weight).sum() / (weight.sum() * 3) + 1e-6 * kl.float()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                run.steps["vae"] += 1
                self.stepped = True
                run.samples["vae"] += x.shape[0]
                rate_n += x.shape[0]
                now = time.monotonic()
                run.elapsed["vae"] += now - t
                if now - last_log >= 15 or self.progress("vae", cfg.vae_steps) >= 1.0:
                    last_log = now
                    self.log("vae", run.steps["vae"], p, rate_n / (now - rate_t), wait / (now - rate_t),
                             loss=loss.item(), refine=float(refine))  # fmt: skip
                    rate_t, rate_n, wait = now, 0, 0.0
                self.maybe_save(
                    lambda: {"vae": vae.state_dict(), "vae_opt": compact_optimizer(opt.state_dict())}
                )
        finally:
            stream.close()
        parts = {"vae": vae.state_dict(), "vae_opt": compact_optimizer(opt.state_dict())}
        if self.progress("vae", cfg.vae_steps) < 1.0:
            self.save(parts)
            return
        vae.eval()
        self.latent_stats(vae)
        from training.embedded.evaluate import vae_roundtrip

        try:  # a figure for the record: its failure must not cost the stage
            run.roundtrip = vae_roundtrip(
                vae, n=self.roundtrip_n, native_area=cfg.native_area, multiple=cfg.multiple
            )
            print(
                f"[vae] round trip (evaluator, {self.roundtrip_n} scenes): {json.dumps(run.roundtrip)}",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001
            print(f"[vae] round trip not scored: {exc!r}", flush=True)
        run.weights.pop("vae_opt", None)
        run.stage = "text"
        self.save({"vae": vae.state_dict()})

    @torch.no_grad()
    def latent_stats(self, vae: Any) -> None:
        """The shift and scale that normalise the latents (mean 0, std 1), from fresh scenes."""
        lats = []
        # every training size on the GPU; two on a CPU (smoke tests: a rough estimate is enough)
        for i in range(len(self.sizes) if self.device.type == "cuda" else 2):
            batch = make_batch(self.recipe("t2i", min(64, 4 * self.cfg.vae_batch), 999_000 + i))
            scenes = scenes_of(batch["target"], self.device)
            x = render_batch(scenes, batch["w"], batch["h"])
            lats.append(vae.encode(x).latent_dist.mode().float().flatten())
        all_lat = torch.cat(lats)
        self.run.shift, self.run.scale = float(all_lat.mean()), float(1.0 / all_lat.std())
        print(f"[vae] latent shift {self.run.shift:.4f} scale {self.run.scale:.4f}", flush=True)

    # ------------------------------------------------------------ stage 2

    def train_text(self) -> None:
        """Stage 2: caption parsing by the T5 encoder (no images)."""
        cfg, run = self.cfg, self.run
        _, _, _, t5, heads = self.text()
        params = list(t5.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=TEXT_LR, weight_decay=0.01)
        base = cfg.seed * 1_000_000 + 20_000_000 + run.steps["text"] * 7919
        stream = self.stream(lambda i: self.recipe("t2i", cfg.batch, base + i))
        rate_t, rate_n, wait, last_log = time.monotonic(), 0, 0.0, 0.0
        try:
            while (p := self.progress("text", cfg.text_steps)) < 1.0 and not self.out_of_time():
                t = time.monotonic()
                batch = stream.next()
                wait += time.monotonic() - t
                ids = torch.from_numpy(batch["ids"]).to(self.device)
                labels = torch.from_numpy(batch["labels"]).long().to(self.device)
                for g in opt.param_groups:
                    g["lr"] = TEXT_LR * 0.5 * (1 + math.cos(math.pi * p))
                with self.autocast:
                    loss = heads.loss(t5(ids)[0], labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                run.steps["text"] += 1
                self.stepped = True
                run.samples["text"] += ids.shape[0]
                rate_n += ids.shape[0]
                now = time.monotonic()
                run.elapsed["text"] += now - t
                if now - last_log >= 15 or self.progress("text", cfg.text_steps) >= 1.0:
                    last_log = now
                    self.log(
                        "text",
                        run.steps["text"],
                        p,
                        rate_n / (now - rate_t),
                        wait / (now - rate_t),
                        loss=loss.item(),
                    )
                    rate_t, rate_n, wait = now, 0, 0.0
                self.maybe_save(lambda: {"t5": t5.state_dict(), "heads": heads.state_dict()})
        finally:
            stream.close()
        if self.progress("text", cfg.text_steps) >= 1.0:
            run.stage = "transformer"
        self.save({"t5": t5.state_dict(), "heads": heads.state_dict()})

    # ------------------------------------------------------------ stage 3

    def train_transformer(self) -> None:
        """Stage 3: the transformer and the T5 encoder (:mod:`training.embedded.gpu_transformer`)."""
        train_transformer(self)

    # ------------------------------------------------------------ stage 4

    def export(self, directory: Path | None) -> Path:
        """Write the EMA weights as a ``FluxKontextPipeline`` (``checkpoint.tar`` in ``--out``,
        and the directory itself at ``directory`` if given); returns the tar file."""
        cfg, run = self.cfg, self.run
        vae = self.vae().eval()
        tok, tok2, clip, t5, _ = self.text()
        t5.load_state_dict(run.weights["ema_5"])
        transformer = make_transformer(cfg)
        transformer.load_state_dict(run.weights["ema_t"])
        target = directory or self.out / "checkpoint"
        export(
            cfg,
            vae,
            {"shift": run.shift, "scale": run.scale},
            (tok, tok2, clip, t5.eval(), transformer.eval()),
            target,
        )
        meta_path = target / "fluxserve.json"
        meta = json.loads(meta_path.read_text())
        meta["gpu_training"] = run.summary() | {"config": None}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        tar = self.out / "checkpoint.tar"
        with tarfile.open(tar.with_suffix(".tar.tmp"), "w") as f:
            f.add(target, arcname="checkpoint")
        tar.with_suffix(".tar.tmp").replace(tar)
        if directory is None:
            shutil.rmtree(target)
        size = (
            sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            if directory
            else tar.stat().st_size
        )
        print(f"[export] {tar} ({size / 2**20:.1f} MiB)", flush=True)
        return tar


def main(argv: list[str] | None = None) -> None:
    """The command line: ``python -m training.embedded.gpu_train`` (every Config field is a flag)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="state and checkpoint.tar go here ($OUT)")
    ap.add_argument("--resume", type=Path, action="append", default=[], help="directories to resume from")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=14, help="CPU processes drawing batches (0: inline)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    ap.add_argument("--roundtrip", type=int, default=120, help="scenes in the autoencoder's round-trip check")
    ap.add_argument(
        "--until", choices=STAGES[1:3], help="stop when this stage is reached (e.g. to check the autoencoder)"
    )
    ap.add_argument("--export", type=Path, help="also write the exported checkpoint directory here")
    for name, value in asdict(Budget()).items():
        flag = (
            "--stop-after"
            if name == "stop_after"
            else "--save-every"
            if name == "save_every"
            else f"--{name}-minutes"
        )
        ap.add_argument(flag, type=float, default=value, dest=f"budget_{name}")
    for name, value in asdict(Config()).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args(argv)
    budget = Budget(**{k: getattr(args, f"budget_{k}") for k in asdict(Budget())})
    cfg = Config(**{k: getattr(args, k) for k in asdict(Config())})
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    source = newest_state([*args.resume, args.out])
    if source is not None:
        run = Run.from_state(load_state(source))
        saved = asdict(run.cfg)
        kept = {k: saved[k] for k in SHAPE_FIELDS if saved[k] != getattr(cfg, k)}
        if kept:
            print(f"note: the model's shape is the saved run's: {kept}", flush=True)
        run.cfg = cfg = Config(**(asdict(cfg) | {k: saved[k] for k in SHAPE_FIELDS}))
        print(f"resuming from {source}: stage {run.stage}, {run.summary()['elapsed_min']} min", flush=True)
    else:
        run = Run(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, budget, args.out, device, args.workers, args.compile, args.roundtrip)
    if run.stage == "done" and trainer.progress("transformer", cfg.steps) < 1.0:
        run.stage = "transformer"  # a larger budget or step cap: train on
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, budget {asdict(budget)}", flush=True)  # fmt: skip
    stages = {"vae": trainer.train_vae, "text": trainer.train_text, "transformer": trainer.train_transformer}
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while run.stage in stages and run.stage != args.until and not trainer.out_of_time():
                stage = run.stage
                stages[stage]()
                if run.stage == stage:  # the stage did not finish: out of time
                    break
    finally:
        trainer.close()
    if run.stage == "done":
        trainer.export(args.export)
    else:
        print(f"stopped in stage {run.stage} after {(time.monotonic() - trainer.t0) / 60:.1f} min; "
              f"run again with --resume to continue", flush=True)  # fmt: skip
    print(f"command time {(time.monotonic() - trainer.t0) / 60:.2f} min", flush=True)


if __name__ == "__main__":
    main()
