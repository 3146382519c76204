"""What the zlib level of PNG results costs and saves (the ``png_compress_level`` setting).

Encodes two 1024x1024 images at each level the way the server does (``encode_image``): one
made by the embedded model (flat colours, the newcomer's case) and one photograph-like image
(smooth colour fields with sensor-like noise, the FLUX case; built here, nothing is
downloaded). Prints, per image and level, the best of ``--repeat`` encode times and the size.

    python bench/png_levels.py [--repeat 5] [--levels 0 1 3 6 9]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image

from fluxserve.images import encode_image


def embedded_image() -> Image.Image:
    """One 1024x1024 image from the shipped embedded model."""
    from pathlib import Path

    from fluxserve.embedded import embedded_checkpoint
    from fluxserve.engines import EngineRequest
    from fluxserve.engines.diffusers_engine import DiffusersFluxEngine

    ckpt = str(embedded_checkpoint())
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    engine.load(ckpt)
    return engine.generate(EngineRequest(ckpt, "a large green star in the top left", 1024, 1024, 1, 16, 4.0))[
        0
    ]


def photo_like_image(seed: int = 0) -> Image.Image:
    """Smooth colour fields (bicubic 64 -> 1024) plus Gaussian noise of sigma 4."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize(
        (1024, 1024), Image.BICUBIC
    )
    pixels = np.asarray(base).astype(np.float64) + rng.normal(0, 4, (1024, 1024, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--levels", type=int, nargs="*", default=[0, 1, 3, 6, 9])
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; best of {args.repeat}", flush=True)
    for name, img in (("embedded", embedded_image()), ("photo-like", photo_like_image())):
        for level in args.levels:
            walls = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                data = encode_image(img, "png", None, png_level=level)
                walls.append(time.perf_counter() - t0)
            print(
                f"{name:10s} level {level}: {min(walls) * 1000:7.1f} ms  {len(data) / 1000:8.1f} kB",
                flush=True,
            )


if __name__ == "__main__":
    main()
