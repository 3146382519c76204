"""How much of a scene survives the embedded model's autoencoder alone (encode -> decode).

This is the ceiling for what the transformer can reach: prints the evaluator's adherence on
round-tripped ground-truth renders, with the trained decoder and (if present) the refined one.

    python bench/vae_roundtrip.py [--work runs/embedded] [--n 120]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ is the repository's, not installed
from training.embedded.config import Config  # noqa: E402
from training.embedded.data import to_tensor  # noqa: E402
from training.embedded.evaluate import score, size_for  # noqa: E402
from training.embedded.model import make_vae  # noqa: E402
from training.embedded.scenes import random_scene, render  # noqa: E402


def adherence(vae: torch.nn.Module, n: int) -> dict[str, float]:
    rng = random.Random(5)
    keys = ("background", "colour", "shape", "position", "all")
    totals = dict.fromkeys(keys, 0.0)
    for i in range(n):
        ratio = ("1:1", "16:9", "9:16", "3:7", "7:3")[i % 5]
        w, h = size_for(ratio, 64 * 64, 8)
        scene = random_scene(rng, w, h, rng.choice((1, 2)), train=False)
        with torch.no_grad():
            rec = vae.decode(vae.encode(to_tensor(render(scene, w, h))[None]).latent_dist.mode()).sample[0]
        img = Image.fromarray(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        s = score(scene, img.resize(size_for(ratio, 256 * 256, 16), Image.Resampling.LANCZOS))
        for k in keys:
            totals[k] += s[k]
    return {k: round(v / n, 3) for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/embedded"))
    ap.add_argument("--n", type=int, default=120)
    args = ap.parse_args()
    for name in ("vae.pt", "vae_refined.pt"):
        path = args.work / name
        if path.exists():
            vae = make_vae(Config())
            vae.load_state_dict(torch.load(path, map_location="cpu"))
            print(f"{name:16s}", adherence(vae.eval(), args.n))


if __name__ == "__main__":
    main()
