"""GPU benchmark (issues 12, 28): plain diffusers against fluxserve's engine, then the server under load.

Builds full-size FLUX architectures from their published configs with random weights (nothing is
downloaded; the tokenizers are small local ones, and every pipeline pads the prompt to its full
length, so the text encoders do the same work as with the real vocabularies), saves each as a
diffusers directory, and in one process on one GPU times

- ``diffusers``: the pipeline called as diffusers' documentation shows,
  ``FluxPipeline.from_pretrained(dir, torch_dtype=torch.bfloat16).to("cuda")`` then
  ``pipe(prompt, height=, width=, guidance_scale=, num_inference_steps=, max_sequence_length=512,
  generator=)``;
- fluxserve's engine (:class:`fluxserve.engines.diffusers_engine.DiffusersFluxEngine`, loading the
  same directory through fluxserve's own loader and :class:`fluxserve.settings.Settings`) in each
  mode of :data:`gpubench.cases.MODES`: ``bf16`` (every speed option off), ``fast`` (fused QKV, regional
  ``torch.compile``, channels-last VAE, fp8 weights through torchao where the GPU has fp8) and
  ``fast+fbcache`` (``fast`` plus First Block Cache: lossy, labelled ``lossy`` in the JSON).

Each case reports seconds per image (median of ``--runs`` >= 5 after warm-up), peak GPU memory,
load and warm-up (compile) seconds, the ratio to plain diffusers and ``image_vs``: how far its
first image (prompt 0, seed 0) is from that of each mode measured before it for the model (mean
absolute difference in levels of 255 and PSNR; ``bf16`` against ``diffusers`` checks that the
engine draws the plain pipeline's image, ``fast`` and ``fbcache`` show what fp8 and step
caching change; with random weights that is a numerical distance, not a judgement of the
picture), and is written to the JSON
file the moment it is measured, so a run cut off by the device's 10-minute limit still returns
what it measured. ``--part server`` then runs ``fluxserve serve`` on loopback with one random-weight
checkpoint and 8 concurrent clients (httpx, OpenAI Images route) and reports images/s and the
fraction of wall time the GPU was busy, sampled from NVML at 10 Hz (see
:class:`gpubench.server.GpuSampler`).

Output: a console log and ``gpu-<device>-<date>.json`` (``device``, ``torch``, ``diffusers``,
``cases``, ``server``) in ``$OUT`` when set, else ``bench/results/``. The runbook is one device
command, ``--plan first`` (:mod:`gpubench.plan`: five steps in about 7 minutes, each estimated by
:mod:`gpubench.estimate`), in bench/RESULTS.md, "GPU benchmark".

``--tiny`` runs the same code path with tiny configs on the CPU (2 steps, small sizes, float32,
``quantize`` off: fp8 needs a GPU), the server part included; tests/test_bench_gpu.py and
tests/test_gpu_plan.py run it.

    python bench/gpu.py --plan first --budget-s 400
    python bench/gpu.py --part engine --models flux1-dev,flux1-kontext-dev
    python bench/gpu.py --part engine,server --models flux1-schnell,flux2-klein-4b
    python bench/gpu.py --tiny --part engine,server

Time per case of the ``--part`` matrix on one H100 (:data:`gpubench.cases.ESTIMATE_S`, for the
budget guard: ``--budget-s`` skips, and records as skipped, a case whose estimate no longer fits):
checkpoint build (random init on the GPU + save): dev 34 GB ~70 s, klein 16 GB ~35 s, schnell
(own copy) ~70 s; dev/Kontext load ~20 s per pipeline from the page cache; dev 28 steps plain
~7 s/image -> 6 runs ~45 s; Kontext (twice the image tokens) ~12 s/image -> ~75 s; schnell and
klein 4 steps ~1 s/image; ``fast`` adds the compile warm-up, ~40-90 s the first time (the
inductor cache on local disk makes the next compile of the same blocks faster).
"""

from __future__ import annotations

import time
from pathlib import Path

STARTED = time.monotonic()
"""When the benchmark's process began (before torch's import): ``--budget-s`` counts from here."""
REPO = Path(__file__).resolve().parents[2]
"""The repository root (on the device machine fluxserve is this tree, ``src/`` on the path)."""
GIB = 1024**3
