"""FLUX.1, FLUX.1 Kontext, FLUX.2 and FLUX.2 klein on CPU or CUDA: one request in, images out.

Loading (sources, families, memory modes) lives in :mod:`fluxserve.engines.loader`.

The built-in tiny checkpoint is just another checkpoint: it declares a small native area in
``fluxserve.json``, so the engine samples at that area and resizes to the requested size.
Real checkpoints declare nothing and are sampled at the requested size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fluxserve.engines import EngineRequest, JobCancelled, PreviewCallback, StepCallback
from fluxserve.engines.adapters import AdapterSet, activate
from fluxserve.engines.loader import LoadedPipeline, load_pipeline
from fluxserve.engines.paired_guidance import true_cfg_pairing
from fluxserve.engines.prompts import FLUX1_FAMILIES, PromptCache, fit_prompt
from fluxserve.engines.sources import CheckpointError, CheckpointSource
from fluxserve.engines.warmup import warm_up
from fluxserve.images import stitch_horizontally
from fluxserve.loras import LoraLibrary
from fluxserve.spec.geometry import fit_area

log = logging.getLogger("fluxserve.engine")

INPAINT_PIPELINES = {"flux1-kontext": "FluxKontextInpaintPipeline", "flux1": "FluxInpaintPipeline"}
"""The diffusers pipeline that runs a masked edit, per family (built over the loaded modules)."""


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; anything else as named."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class DiffusersFluxEngine:
    """One engine for every FLUX-family checkpoint; pipelines are loaded once and reused."""

    def __init__(
        self,
        resolve: Callable[[str], Path | CheckpointSource],
        device: str = "auto",
        dtype: str = "auto",
        loras: LoraLibrary | None = None,
        lora_cache_size: int = 8,
        prompt_cache_size: int = 32,
    ) -> None:
        self._resolve = resolve
        self._loras = loras or LoraLibrary([])
        self._lora_cache_size = lora_cache_size
        self._adapters: dict[str, AdapterSet] = {}
        self.prompt_cache = PromptCache(prompt_cache_size)
        self._side_stream: torch.cuda.Stream | None = None  # prefetch's encoders run here (CUDA)
        """Text-encoder outputs of recent prompts (``hits``/``misses`` count its use)."""
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self._pipes: dict[str, LoadedPipeline] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def load(self, checkpoint: str) -> None:
        """Load the pipeline for ``checkpoint`` once (later calls return at once)."""
        with self._lock:
            self._load_locked(checkpoint)

    def loaded(self, checkpoint: str) -> LoadedPipeline | None:
        """The pipeline of ``checkpoint`` once it has loaded (for inspection), else None."""
        return self._pipes.get(checkpoint)

    def unavailable(self, checkpoint: str) -> str | None:
        """Why ``checkpoint`` failed to load, or None (loaded, or not tried yet)."""
        return self._failed.get(checkpoint)

    def _load_locked(self, checkpoint: str) -> LoadedPipeline:
        if checkpoint in self._pipes:
            return self._pipes[checkpoint]
        if checkpoint in self._failed:  # a failed load is not retried for every request
            raise CheckpointError(self._failed[checkpoint])
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        try:
            where = self._resolve(checkpoint)
            source = where if isinstance(where, CheckpointSource) else CheckpointSource(str(where))
            loaded = load_pipeline(source, self.device, self.dtype, has_loras=bool(self._loras.dirs))
            warm_up(loaded, source.speed.warmup_sizes, checkpoint)  # compiles now, not on a request
        except Exception as exc:
            cause = str(exc) if isinstance(exc, CheckpointError) else f"{exc.__class__.__name__}: {exc}"
            self._failed[checkpoint] = f"checkpoint {checkpoint!r}: {cause}"
            raise CheckpointError(self._failed[checkpoint]) from exc
        self._pipes[checkpoint] = loaded
        self._adapters[checkpoint] = AdapterSet(self._lora_cache_size)
        return loaded

    def generate(
        self,
        request: EngineRequest,
        on_step: StepCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
        want_preview: Callable[[int], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Run one request (see :class:`~fluxserve.engines.Engine`); one at a time."""
        with self._lock:
            return self._run_locked(request, on_step, cancelled, want_preview, on_preview)

    def _run_locked(
        self,
        request: EngineRequest,
        on_step: StepCallback | None,
        cancelled: Callable[[], bool] | None,
        want_preview: Callable[[int], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        m = self._load_locked(request.checkpoint)
        self._activate_locked(request)
        return self._generate_locked(m, [request], on_step, cancelled, want_preview, on_preview)

    def _activate_locked(self, request: EngineRequest) -> None:
        """Switch the pipeline's LoRA adapters to the request's (loaded once, kept in an LRU)."""
        loras = [(ref, self._loras.path(ref.name)) for ref in request.loras]
        activate(self._pipes[request.checkpoint].pipe, self._adapters[request.checkpoint], loras)

    def generate_batch(
        self,
        requests: list[EngineRequest],
        on_step: StepCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """Run ``requests`` as one pipeline call when they can share it (see
        :func:`batchable`), else one after another; returns each request's images. Every image
        still starts from its own seed's noise, so a job gets its own image, not a neighbour's;
        batched arithmetic may differ from a lone run in the last bits (the README says how
        much). ``on_step`` reports the batch's steps; ``cancelled()`` stops the whole batch."""
        with self._lock:
            m = self._load_locked(requests[0].checkpoint)
            if not batchable(m, requests):
                return [self._run_locked(r, on_step, cancelled) for r in requests]
            self._activate_locked(requests[0])
            images = self._generate_locked(m, requests, on_step, cancelled)
        split: list[list[Image.Image]] = []
        for r in requests:
            split.append(images[: r.num_images])
            images = images[r.num_images :]
        return split

    def prefetch(self, request: EngineRequest) -> bool:
        """Encode the prompt of a job that runs soon while the current job denoises (called
        from another thread); that job then skips its text encoders. Only where it is safe
        beside a run: a loaded FLUX.1/Kontext pipeline kept whole on its device (no offload
        hooks moving modules), and no LoRA directories (an adapter active for the current job
        may patch the text encoders). On CUDA the encoders run on a side stream. Returns
        whether anything was encoded."""
        m = self._pipes.get(request.checkpoint)
        if (
            m is None
            or m.family.name not in FLUX1_FAMILIES
            or m.memory.mode != "gpu"
            or self._loras.dirs
            or self.prompt_cache.size <= 0
        ):
            return False
        key = (request.checkpoint, m.max_sequence_length, ())
        prompt, _ = fit_prompt(m.prompt_grammar, request.prompt, bool(request.images))
        if self.device.type == "cuda" and self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        stream = self._side_stream
        with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else nullcontext():
            encoded = self.prompt_cache.prepare(
                m.pipe, key, prompt, m.max_sequence_length, negative=m.true_cfg
            )
        if stream is not None:
            stream.synchronize()  # the embeddings are complete before a run on another stream reads them
        return encoded

    def _generate_locked(
        self,
        m: LoadedPipeline,
        reqs: list[EngineRequest],
        on_step: StepCallback | None,
        cancelled: Callable[[], bool] | None,
        want_preview: Callable[[int], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """One pipeline call for ``reqs`` (one request, or a batch that :func:`batchable` allows)."""
        req = reqs[0]
        if m.native_area:
            width, height = fit_area(req.width, req.height, m.native_area, m.multiple)
        else:
            width = req.width // m.multiple * m.multiple
            height = req.height // m.multiple * m.multiple

        flux2 = m.family.native_references  # FLUX.2 latents need their ids to decode: no previews

        def step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(i + 1, req.steps)
            if on_preview is not None and want_preview is not None and want_preview(i + 1) and not flux2:
                on_preview(i + 1, self._decode_preview(pipe, kwargs["latents"], height, width))
            if cancelled is not None and cancelled():
                raise JobCancelled()
            return kwargs

        # What the checkpoint can read of each prompt (the embedded model: its grammar); the job's
        # result says so when that is an approximation.
        prompts = []
        for r in reqs:
            prompt, note = fit_prompt(m.prompt_grammar, r.prompt, bool(r.images))
            prompts.append(prompt)
            if note:
                r.extras["approximation"] = note
        # One CPU generator per image: each image's noise depends on its seed alone.
        seeds = [r.seed + i for r in reqs for i in range(r.num_images)]
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = dict(
            prompt=prompts[0],
            height=height,
            width=width,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            num_images_per_prompt=req.num_images,
            generator=generators,
            max_sequence_length=m.max_sequence_length,
            callback_on_step_end=step_end,
        )
        if m.true_cfg:
            kwargs["negative_prompt"] = ""
            kwargs["true_cfg_scale"] = req.guidance
        pipe = m.pipe
        if req.mask is not None:
            pipe = self._inpaint_kwargs(m, req, width, height, kwargs)
        else:
            self._reference_kwargs(m, req, width, height, kwargs)

        if cancelled is not None and cancelled():
            raise JobCancelled()
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
        with torch.inference_mode():
            if m.family.name in FLUX1_FAMILIES:  # the text encoders run once per distinct prompt
                key = (req.checkpoint, m.max_sequence_length, tuple(r for r in req.loras if r.scale))
                del kwargs["prompt"]
                kwargs.pop("negative_prompt", None)
                kwargs["num_images_per_prompt"] = 1
                parts = [
                    self.prompt_cache.pipeline_kwargs(
                        pipe, key, prompt, r.num_images, m.max_sequence_length, negative=m.true_cfg
                    )
                    for r, prompt in zip(reqs, prompts, strict=True)
                ]
                kwargs.update({name: torch.cat([p[name] for p in parts]) for name in parts[0]})
            # True CFG's two transformer calls a step as one (the embedded model: 25-37 % faster)
            with true_cfg_pairing(pipe.transformer, m.true_cfg, req.guidance):
                images: list[Image.Image] = pipe(**kwargs).images
        if (width, height) != (req.width, req.height):  # native area: resize to the request
            images = [im.resize((req.width, req.height), Image.Resampling.LANCZOS) for im in images]
        return images

    def _reference_kwargs(
        self, m: LoadedPipeline, req: EngineRequest, width: int, height: int, kwargs: dict[str, Any]
    ) -> None:
        """Input images as the family takes them: a list (FLUX.2) or stitched into one (Kontext)."""
        family = m.family
        if req.images and not family.max_reference_images:
            raise ValueError("this model's checkpoint is not a Kontext checkpoint: it takes no input images")
        if len(req.images) > family.max_reference_images:
            raise ValueError(
                f"this model's checkpoint ({family.pipeline}) takes at most "
                f"{family.max_reference_images} input images, not {len(req.images)}"
            )
        if family.name == "flux1-kontext":
            kwargs["max_area"] = width * height
        if family.native_references and req.images:
            # FLUX.2 attends to each reference image on its own: passed as a list.
            kwargs["image"] = [self._fit_reference(im, m) for im in req.images]
        elif req.images:
            cond = stitch_horizontally(req.images)
            kwargs["image"] = self._fit_reference(cond, m)
            if m.native_area:
                kwargs["_auto_resize"] = False

    def _inpaint_kwargs(
        self, m: LoadedPipeline, req: EngineRequest, width: int, height: int, kwargs: dict[str, Any]
    ) -> Any:
        """Set up a masked edit: the first input image is repainted where the mask is white
        (FLUX.1 Kontext through its inpainting pipeline, the other inputs as its reference;
        FLUX.1 through FluxInpaintPipeline). Returns the pipeline to call (sharing the loaded
        modules, made once)."""
        import diffusers

        assert req.mask is not None
        kind = INPAINT_PIPELINES.get(m.family.name)
        if kind is None:
            raise ValueError(
                f"this model's checkpoint ({m.family.pipeline}) cannot take a mask (no inpainting)"
            )
        if not req.images:
            raise ValueError("a mask needs the image to edit")
        if m.inpaint is None:
            m.inpaint = getattr(diffusers, kind).from_pipe(m.pipe)
            m.inpaint.set_progress_bar_config(disable=True)
        kwargs["image"] = req.images[0].convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        kwargs["mask_image"] = req.mask.convert("L").resize((width, height), Image.Resampling.BILINEAR)
        kwargs["strength"] = 1.0
        if kind == "FluxKontextInpaintPipeline":
            kwargs["max_area"] = width * height
            kwargs["_auto_resize"] = False
            if len(req.images) > 1:
                kwargs["image_reference"] = self._fit_reference(stitch_horizontally(req.images[1:]), m)
        return m.inpaint

    @staticmethod
    def _fit_reference(image: Image.Image, m: LoadedPipeline) -> Image.Image:
        """A reference image at the checkpoint's native area (the embedded model), else as is."""
        if not m.native_area:
            return image
        w, h = fit_area(image.width, image.height, m.native_area, m.multiple)
        if m.family.native_references and min(w, h) < 64:  # FLUX.2 refuses sides under 64 px
            scale = 64 / min(w, h)
            w, h = (-(-round(side * scale) // m.multiple) * m.multiple for side in (w, h))
        return image.resize((w, h), Image.Resampling.LANCZOS)

    @staticmethod
    def _decode_preview(pipe: Any, latents: Any, height: int, width: int) -> list[Image.Image]:
        """Decode the current (noisy) latents of the first image: what the run looks like now."""
        lat = pipe._unpack_latents(latents[:1], height, width, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
        return images


def batchable(m: LoadedPipeline, requests: list[EngineRequest]) -> bool:
    """Whether ``requests`` can run as one pipeline call on ``m``: FLUX.1/Kontext text-to-image
    requests (no input images, no mask) of one checkpoint, size, step count, guidance and LoRA
    set; their prompts, seeds and image counts may differ."""
    first = requests[0]
    return (
        len(requests) > 1
        and m.family.name in FLUX1_FAMILIES
        and all(
            (r.checkpoint, r.width, r.height, r.steps, r.guidance, r.loras)
            == (first.checkpoint, first.width, first.height, first.steps, first.guidance, first.loras)
            and not r.images
            and r.mask is None
            for r in requests
        )
    )
