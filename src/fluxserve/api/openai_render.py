"""Rendering an ended job as the OpenAI Images API answers: the images (finished as the request
asked), the settings used and the token usage, or the error the job ended with.

What OpenAI's GPT-image models do, fluxserve does for their names: they answer ``b64_json``
unless told otherwise, and every answer echoes ``background``, ``output_format``, ``quality``
and ``size`` and carries ``usage``. The usage is counted in FLUX's own units (see
:func:`usage`), so its numbers mean the same for every model.
"""

from __future__ import annotations

import base64
import io
import math
import unicodedata
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from fastapi import Request
from PIL import Image

from fluxserve.api.errors import OpenAIError
from fluxserve.api.openai_schemas import (
    ImageData,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
    OutputTokensDetails,
)
from fluxserve.api.state import AppState
from fluxserve.images import ImageLimits
from fluxserve.jobs import Job, JobStatus
from fluxserve.spec import MIN_STEPS, ResponseFormat

if TYPE_CHECKING:
    from fluxserve.api.openai_schemas import ImageOptions

GPT_IMAGE_PREFIX = "gpt-image-"
"""Model ids that behave as OpenAI's GPT-image models (``gpt-image-1``, ``-1-mini``, ``-1.5``, ``-2``)."""
NO_INPUT_FIDELITY = frozenset({"gpt-image-1-mini", "dall-e-2", "dall-e-3"})
"""Models that refuse ``input_fidelity``, as on OpenAI."""
NO_BACKGROUND = frozenset({"dall-e-2", "dall-e-3"})
"""Models that refuse ``background`` (OpenAI: GPT-image models only)."""
LOW_FIDELITY_PIXELS = 1024 * 1024
"""``input_fidelity: low`` scales each input image to at most this many pixels."""
PIXELS_PER_IMAGE_TOKEN = 16 * 16
"""One FLUX latent token stands for 16x16 pixels (8x VAE downsampling, 2x2 patches)."""

Quality = Literal["low", "medium", "high"]


def is_gpt_image(model_id: str) -> bool:
    """Whether ``model_id`` is one of OpenAI's GPT-image names."""
    return model_id.startswith(GPT_IMAGE_PREFIX)


def default_response_format(model_id: str) -> ResponseFormat:
    """``b64_json`` for GPT-image names (OpenAI's models answer nothing else), else ``url``
    (the FLUX names, as the resellers answer them)."""
    return "b64_json" if is_gpt_image(model_id) else "url"


def resolved_quality(quality: str | None) -> Quality:
    """The quality a request gets: low and medium as asked; auto, high, hd, standard: high."""
    return "low" if quality == "low" else "medium" if quality == "medium" else "high"


def quality_steps(quality: str | None, default_steps: int) -> int | None:
    """Denoising steps for a quality when the request sets none: half the model's steps for
    low, three quarters for medium; None (the model's default) for high."""
    fraction = {"low": 0.5, "medium": 0.75}.get(resolved_quality(quality))
    return max(MIN_STEPS, round(default_steps * fraction)) if fraction else None


@dataclass(frozen=True)
class Finish:
    """How an answer presents a job's images, from the request: the background (a
    transparent one is keyed out of the image here) and the quality echoed."""

    background: Literal["transparent", "opaque"] = "opaque"
    quality: Quality = "high"

    @classmethod
    def of(cls, opts: ImageOptions) -> Finish:
        """The finish a request asked for."""
        background: Literal["transparent", "opaque"] = (
            "transparent" if opts.background == "transparent" else "opaque"
        )
        return cls(background, resolved_quality(opts.quality))


def check_gpt_image_options(model_id: str, opts: ImageOptions, input_images: int) -> None:
    """Refuse (400) the GPT-image options a model cannot honour: ``input_fidelity`` without
    input images or on a model without it, ``background`` on DALL-E, and a transparent
    background in jpeg (no alpha channel)."""
    if opts.input_fidelity is not None:
        if not input_images:
            raise OpenAIError(
                400, "input_fidelity applies to edits: send input images", param="input_fidelity"
            )
        if model_id in NO_INPUT_FIDELITY:
            raise OpenAIError(
                400, f"model '{model_id}' does not support input_fidelity", param="input_fidelity"
            )
    if opts.background not in (None, "auto") and model_id in NO_BACKGROUND:
        raise OpenAIError(
            400,
            f"model '{model_id}' does not support background; use a GPT-image or FLUX model",
            param="background",
        )
    if opts.background == "transparent" and opts.output_format == "jpeg":
        raise OpenAIError(
            400,
            "a transparent background needs output_format 'png' or 'webp' (jpeg has no alpha)",
            param="output_format",
        )


def input_limits(limits: ImageLimits, model_id: str, fidelity: str | None) -> ImageLimits:
    """The input-image limits for an edit: ``low`` fidelity (the GPT-image names' default,
    as on OpenAI) scales each image to at most :data:`LOW_FIDELITY_PIXELS`; ``high`` (the
    FLUX names' default) keeps the server's working size."""
    if (fidelity or ("low" if is_gpt_image(model_id) else "high")) == "low":
        return replace(limits, max_working_pixels=min(limits.max_working_pixels, LOW_FIDELITY_PIXELS))
    return limits


def usage(job: Job) -> ImagesUsage:
    """Token usage in FLUX's units: text tokens are the words of the caller's prompt; image
    tokens are pixels / 256 (one per 16x16 latent patch) of the input images (as the job
    used them) and of every generated image."""
    spec = job.spec
    text = len((spec.original_prompt or spec.prompt).split())
    image_in = round(spec.input_megapixels * 1e6 / PIXELS_PER_IMAGE_TOKEN)
    per_image = math.ceil(spec.width / 16) * math.ceil(spec.height / 16)
    out = per_image * spec.num_images
    return ImagesUsage(
        total_tokens=text + image_in + out,
        input_tokens=text + image_in,
        output_tokens=out,
        input_tokens_details=InputTokensDetails(text_tokens=text, image_tokens=image_in),
        output_tokens_details=OutputTokensDetails(image_tokens=out),
    )


# Keying: a pixel is background when no channel differs from the background colour by more
# than KEY_TOLERANCE; it fades in from KEY_SOFT, so anti-aliased edges stay smooth.
KEY_TOLERANCE = 48
KEY_SOFT = 16


def transparent(data: bytes, output_format: str, compression: int | None, *, png_level: int) -> bytes:
    """The image with its background made transparent, encoded as png or webp (with alpha).

    The background is the colour of the image's border (its median); the pixels of that
    colour connected to the border become transparent, so a subject that contains the colour
    keeps it. Images that FLUX draws on a plain background key cleanly."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    distance = np.abs(rgb - np.median(border, axis=0)).max(axis=2)
    near = distance <= KEY_TOLERANCE
    # Grow the background from the border through near pixels (4-connected) until it stops.
    region = np.zeros_like(near)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        region[edge] = near[edge]
    while True:
        before = int(region.sum())
        for _ in range(8):  # a few steps between the (costlier) checks
            grown = region.copy()
            grown[1:] |= region[:-1]
            grown[:-1] |= region[1:]
            grown[:, 1:] |= region[:, :-1]
            grown[:, :-1] |= region[:, 1:]
            region = grown & near
        if int(region.sum()) == before:
            break
    fade = np.clip((distance - KEY_SOFT) * 255 // (KEY_TOLERANCE - KEY_SOFT), 0, 255)
    alpha = np.where(region, fade, 255).astype(np.uint8)
    rgba = np.dstack([rgb.astype(np.uint8), alpha])
    out = io.BytesIO()
    image = Image.fromarray(rgba, "RGBA")
    if output_format == "webp":
        image.save(out, format="WEBP", quality=compression if compression is not None else 95, exact=True)
    else:
        image.save(out, format="PNG", compress_level=png_level)
    return out.getvalue()


def finished_image(state: AppState, job: Job, key: str, finish: Finish) -> tuple[str, bytes]:
    """One result file as the answer shows it: the stored file, or its transparent version
    (stored beside it, under the job's prefix, so the retention sweep deletes it too)."""
    data = state.storage.get(key)
    if finish.background != "transparent":
        return key, data
    stem, _, ext = key.rpartition(".")
    keyed_key = f"{stem}-transparent.{ext}"
    keyed = transparent(
        data, job.spec.output_format, job.spec.output_compression, png_level=state.settings.png_compress_level
    )
    state.storage.put(keyed_key, keyed)
    return keyed_key, keyed


APPROXIMATION_HEADER = "X-Fluxserve-Approximation"
"""Set when the embedded model could only approximate the prompt: the job's note, in ASCII."""


def approximation_headers(note: str | None) -> dict[str, str]:
    """The :data:`APPROXIMATION_HEADER` for ``note`` (a job's ``details.approximation``), none
    without one. Header values are ASCII: other letters lose their accents, anything else
    becomes ``?``."""
    if not note:
        return {}
    letters = "".join(c for c in unicodedata.normalize("NFKD", note) if not unicodedata.combining(c))
    plain = letters.encode("ascii", "replace").decode()
    return {APPROXIMATION_HEADER: " ".join(plain.split())}


def render(request: Request, state: AppState, job: Job, finish: Finish | None = None) -> ImagesResponse:
    """The OpenAI answer for an ended job (or the error it ended with)."""
    finish = finish or Finish()
    if not job.terminal:
        raise OpenAIError(
            504,
            f"Generation is still running after {state.settings.sync_timeout_s:.0f}s. It is job "
            f"{job.id}: poll GET /v1/get_result?id={job.id} for its result.",
            type="server_error",
            code="timeout",
        )
    if job.status in (JobStatus.REQUEST_MODERATED, JobStatus.CONTENT_MODERATED):
        category = (job.details or {}).get("moderation", {}).get("category", "unspecified")
        raise OpenAIError(
            400,
            f"Your request was rejected by the safety system (category: {category}).",
            code="moderation_blocked",
        )
    if job.status != JobStatus.READY or job.result is None:
        error = (job.details or {}).get("error", "unknown error")
        raise OpenAIError(
            500,
            f"Generation failed for job {job.id}: {error}",
            type="server_error",
            code="generation_failed",
        )
    spec = job.spec
    revised = job.result["prompt"] if spec.prompt_upsampling else None
    data = []
    for key in job.result["files"]:
        if spec.response_format == "b64_json":
            _, image = finished_image(state, job, key, finish)
            data.append(ImageData(b64_json=base64.b64encode(image).decode(), revised_prompt=revised))
        else:
            if finish.background == "transparent":
                key, _ = finished_image(state, job, key, finish)
            url = state.file_url(state.base_url(request), key)
            data.append(ImageData(url=url, revised_prompt=revised))
    return ImagesResponse(
        created=int(job.created_at),
        data=data,
        background=finish.background,
        output_format=spec.output_format,
        quality=finish.quality,
        size=f"{spec.width}x{spec.height}",
        usage=usage(job),
    )
