"""How much of a scene survives the embedded model's autoencoder alone (encode -> decode).

This is the ceiling for what the transformer can reach: prints the evaluator's adherence on
ground-truth renders (the scorer's own ceiling), then on the same scenes round-tripped through
the checkpoint's autoencoder, and through any training states given with ``--state``
(``runs/decoder/best.pt`` of ``python -m training.embedded.decoder``; ``vae.pt`` /
``vae_refined.pt`` of ``python -m training.embedded.train``).

    python bench/vae_roundtrip.py [--checkpoint DIR] [--state FILE ...] [--layers N] [--n 120]
    python bench/vae_roundtrip.py --time 10 [--checkpoint DIR ...]

``--time N`` instead times the engine end to end on the checkpoints given (the shipped one by
default): N text-to-image generations at 1024x1024 with the checkpoint's default steps and
guidance (sampled at the native area, decoded, resized), each encoded to PNG as the server
does, after one warm-up; prints the median and the minimum, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ is the repository's, not installed
from training.embedded.decoder import deepen, shipped_vae  # noqa: E402
from training.embedded.evaluate import vae_roundtrip  # noqa: E402


class Identity(torch.nn.Module):
    """An 'autoencoder' that gives back its input: the scorer on ground truth."""

    class _Out:
        def __init__(self, x: torch.Tensor) -> None:
            self.latent_dist, self.sample = self, x

        def mode(self) -> torch.Tensor:
            return self.sample

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))  # vae_roundtrip reads the device from it

    def encode(self, x: torch.Tensor) -> _Out:
        return self._Out(x)

    def decode(self, x: torch.Tensor) -> _Out:
        return self._Out(x)


def time_engine(checkpoint: Path, n: int) -> None:
    """Seconds per 1024x1024 image through the engine (generate + PNG encode), median of ``n``."""
    import json

    from fluxserve.engines import EngineRequest
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
    from fluxserve.images import encode_image
    from fluxserve.settings import Settings

    meta = json.loads((checkpoint / "fluxserve.json").read_text())
    steps, guidance = int(meta.get("default_steps", 16)), float(meta.get("default_guidance", 4.0))
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    engine.load(str(checkpoint))
    walls = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        req = EngineRequest(
            str(checkpoint), "a large green star in the top left", 1024, 1024, i, steps, guidance
        )
        encode_image(engine.generate(req)[0], "png", None, png_level=Settings().png_compress_level)
        if i:  # the first is a warm-up
            walls.append(time.perf_counter() - t0)
    print(
        f"{str(checkpoint):36s} 1024x1024, {steps} steps: median {statistics.median(walls):.3f} s, "
        f"min {min(walls):.3f} s over {n} (load average {os.getloadavg()[0]:.2f})",
        flush=True,
    )


def main() -> None:
    from fluxserve.embedded import embedded_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=embedded_checkpoint())
    ap.add_argument("--state", type=Path, nargs="*", default=[], help="autoencoder state dicts to score too")
    ap.add_argument("--layers", type=int, help="the states' --layers (training/embedded/decoder.py)")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=int, metavar="N", help="time N 1024x1024 generations instead")
    ap.add_argument("--time-checkpoints", type=Path, nargs="*", default=[], help="with --time: these too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.time:
        for checkpoint in [args.checkpoint, *args.time_checkpoints]:
            time_engine(checkpoint, args.time)
        return
    rows: list[tuple[str, torch.nn.Module]] = [("ground truth", Identity())]
    rows.append((f"{args.checkpoint.name}/vae", shipped_vae(args.checkpoint)))
    for path in args.state:
        vae = deepen(shipped_vae(args.checkpoint), args.layers)
        weights = torch.load(path, map_location="cpu")
        vae.load_state_dict(weights.get("model", weights))
        rows.append((str(path), vae))
    for name, vae in rows:
        t0 = time.perf_counter()
        figures = vae_roundtrip(vae.eval(), args.n)
        print(f"{name:36s} {figures}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
