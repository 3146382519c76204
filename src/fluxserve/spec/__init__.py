"""The normalized generation request, and the one builder that makes it.

Both protocol adapters map their own field names onto :class:`SpecOptions` and call
:func:`build_spec`; every default, bound, the size cascade and the seed draw live here (the
size geometry itself in :mod:`fluxserve.spec.geometry`), so a request means the same thing
whichever protocol it came by. Every rule raises :class:`SpecError`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, Literal, Protocol

from fluxserve.spec.errors import SpecError as SpecError  # part of this package's surface
from fluxserve.spec.geometry import (
    FLUX2_MIN_SIDE,
    MAX_RATIO,
    MIN_RATIO,
    ONE_MEGAPIXEL,
    SIDE_MULTIPLE,
    aspect_to_size,
    check_flux2_size,
    check_size,
    parse_aspect_ratio,
    parse_size,
)

OutputFormat = Literal["jpeg", "png", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
ResponseFormat = Literal["url", "b64_json"]
WireProtocol = Literal["bfl", "openai"]

MAX_SEED = 2**63 - 1
"""Largest seed accepted (a signed 64-bit integer: what every job store can hold)."""
DRAWN_SEED_BELOW = 2**32
"""Seeds drawn for requests without one are below this, so they are short to copy."""
MIN_STEPS, MAX_STEPS = 1, 50
MIN_GUIDANCE, MAX_GUIDANCE = 1.5, 5.0
MAX_IMAGES = 10
MAX_PARTIAL_IMAGES = 3
MAX_INPUT_IMAGES = 4
"""Input images of a model that declares no limit of its own (the catalog's entries do)."""
MAX_EDIT_IMAGES = 16
"""The most input images any model takes (OpenAI's GPT image models): no request has more."""
MAX_GUIDANCE_FLUX2 = 10.0
"""FLUX.2 takes guidance up to 10 (BFL's flex); FLUX.1 up to :data:`MAX_GUIDANCE`."""
MAX_WEBHOOK_URL = 2083
MAX_LORAS = 4
"""LoRA adapters one request may combine."""
MIN_LORA_SCALE, MAX_LORA_SCALE = -2.0, 2.0
_LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PROMPT_LIMITS: dict[WireProtocol, int] = {"bfl": 4096, "openai": 32000}
"""Longest prompt, in characters, per protocol: BFL documents 4096, OpenAI 32,000."""


def new_seed() -> int:
    """A random seed, for requests that give none (recorded with the job, so it is reproducible)."""
    return secrets.randbelow(DRAWN_SEED_BELOW)


class ModelDefaults(Protocol):
    """What the builder needs of a catalog entry (``catalog.ModelEntry`` is one)."""

    @property
    def id(self) -> str:
        """The model id."""

    @property
    def family(self) -> str:
        """``kontext``, ``pro``, ``ultra`` or ``flux2``: decides the default size."""

    @property
    def steps(self) -> int:
        """Default denoising steps."""

    @property
    def guidance(self) -> float:
        """Default guidance."""

    @property
    def area(self) -> int:
        """Pixels of an image made from an aspect ratio."""

    @property
    def default_output_format(self) -> OutputFormat:
        """Format when the request names none."""


@dataclass(frozen=True)
class LoraRef:
    """One LoRA adapter of a request: a name from the server's LoRA directories, and its scale."""

    name: str
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationSpec:
    """One normalized, immutable request: what both protocol adapters produce."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    output_format: OutputFormat
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    num_images: int = 1
    output_compression: int | None = None
    input_images: tuple[str, ...] = ()
    """Storage keys of the normalized input images (saved before the job is queued)."""
    mask_image: str | None = None
    """Storage key of an edit mask (white = repaint the first input image), saved with the inputs."""
    input_megapixels: float = 0.0
    """Size of the input images together (BFL's ``input_mp``)."""
    webhook_url: str | None = None
    webhook_secret: str | None = None
    protocol: WireProtocol = "bfl"
    response_format: ResponseFormat = "url"
    """OpenAI: answer with signed URLs or base64."""
    user: str | None = None
    """OpenAI's end-user identifier, kept for the record."""
    partial_images: int = 0
    """OpenAI streaming: how many partial images to send before the final one."""
    original_prompt: str | None = None
    """The caller's prompt when prompt upsampling rewrote ``prompt``."""
    loras: tuple[LoraRef, ...] = ()
    """LoRA adapters applied to the model for this request (part of what the seed reproduces)."""

    @property
    def interactive(self) -> bool:
        """True when a client waits on an open connection (an OpenAI call): see the queue policy."""
        return self.protocol == "openai"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the job store keeps)."""
        data = asdict(self)
        data["input_images"] = list(self.input_images)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationSpec:
        """The inverse of :meth:`to_json`; also reads rows written before the typed fields,
        whose protocol details sat in an ``extras`` dict."""
        data = dict(data)
        extras = data.pop("extras", None) or {}
        known = {f.name for f in fields(cls)}
        for name, value in extras.items():
            if name == "input_mp":
                data.setdefault("input_megapixels", value or 0.0)
            elif name in known:
                data.setdefault(name, value)
        data["input_images"] = tuple(data.get("input_images", ()))
        data["loras"] = tuple(LoraRef(str(x["name"]), float(x["scale"])) for x in data.get("loras") or ())
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SpecOptions:
    """What a caller asked for, in protocol-neutral names; ``None`` means "not given"."""

    prompt: str
    protocol: WireProtocol = "bfl"
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    """OpenAI's ``"WxH"`` or ``"auto"``."""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    num_images: int = 1
    webhook_url: str | None = None
    webhook_secret: str | None = None
    response_format: ResponseFormat = "url"
    user: str | None = None
    partial_images: int = 0
    loras: Sequence[tuple[str, float]] = ()
    """(name, scale) pairs, in the order given."""


def check_text(value: str, param: str, max_chars: int | None = None) -> None:
    """Refuse text that is too long or is not valid Unicode (a lone surrogate from JSON)."""
    if max_chars is not None and len(value) > max_chars:
        raise SpecError(f"{param} is longer than {max_chars} characters ({len(value)})", param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpecError(
            f"{param} is not valid Unicode text (a lone surrogate at position {exc.start})", param
        ) from exc


def _check_range(value: float | None, lo: float, hi: float, param: str) -> None:
    if value is not None and not lo <= value <= hi:
        raise SpecError(f"{param} must be between {lo} and {hi}, got {value}", param)


def check_loras(loras: Sequence[tuple[str, float]], available: Collection[str]) -> tuple[LoraRef, ...]:
    """Check a request's LoRAs: names (never paths) that the server has, bounded scales."""
    if len(loras) > MAX_LORAS:
        raise SpecError(f"at most {MAX_LORAS} LoRAs can be combined, got {len(loras)}", "loras")
    refs: list[LoraRef] = []
    for i, (name, scale) in enumerate(loras):
        param = f"loras[{i}]"
        check_text(name, param + ".name", 128)
        if not _LORA_NAME.fullmatch(name) or ".." in name:
            raise SpecError(
                f"{param}.name must be the name of a LoRA on this server (letters, digits, '.', "
                f"'_', '-'; no paths or URLs), got {name[:60]!r}; GET /v1/loras lists them",
                param + ".name",
            )
        if name not in available:
            names = sorted(available)
            listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise SpecError(
                f"unknown LoRA {name!r}: "
                + (f"this server has {listed}" if names else "this server has no LoRAs (lora_dirs)"),
                param + ".name",
            )
        if not (math.isfinite(scale) and MIN_LORA_SCALE <= scale <= MAX_LORA_SCALE):
            raise SpecError(
                f"{param}.scale must be between {MIN_LORA_SCALE} and {MAX_LORA_SCALE}, got {scale}",
                param + ".scale",
            )
        if any(r.name == name for r in refs):
            raise SpecError(f"LoRA {name!r} is given twice", param + ".name")
        refs.append(LoraRef(name, float(scale)))
    return tuple(refs)


def default_size(entry: ModelDefaults) -> tuple[int, int]:
    """A model's size when the request gives none: pro 1024x768, ultra 16:9 at ~4 MP, else 1024²."""
    if entry.family == "pro":
        return 1024, 768
    if entry.family == "ultra":
        return aspect_to_size(Fraction(16, 9), entry.area)
    return 1024, 1024


def input_limit(entry: ModelDefaults) -> int:
    """How many input images ``entry`` takes: its ``input_limit`` (catalog entries have one),
    else :data:`MAX_INPUT_IMAGES`."""
    return min(int(getattr(entry, "input_limit", MAX_INPUT_IMAGES)), MAX_EDIT_IMAGES)


def check_input_count(entry: ModelDefaults, count: int, param: str | None = None) -> None:
    """Refuse more input images than ``entry`` takes, naming its limit. The one check of the
    count: :func:`build_spec` calls it, and the adapters call it before fetching any image."""
    limit = input_limit(entry)
    if count > limit:
        what = f"at most {limit} input images" if limit else "no input images"
        raise SpecError(f"model '{entry.id}' takes {what}, got {count}", param)


def size_from_image(entry: ModelDefaults, image_size: tuple[int, int]) -> tuple[int, int]:
    """Kontext without an aspect ratio follows the (first) input image's shape; FLUX.2 takes
    its size, scaled down to 1 megapixel if larger (as the FLUX.2 pipeline does)."""
    if entry.family == "flux2":
        scale = min(1.0, math.sqrt(ONE_MEGAPIXEL / (image_size[0] * image_size[1])))
        w, h = (
            max(FLUX2_MIN_SIDE, int(side * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE) for side in image_size
        )
        return w, h
    ratio = Fraction(image_size[0], image_size[1]).limit_denominator(1000)
    ratio = min(max(ratio, MIN_RATIO), MAX_RATIO)
    return aspect_to_size(ratio, entry.area)


def requested_size(entry: ModelDefaults, options: SpecOptions) -> tuple[int, int] | None:
    """The size the request names, checked: width/height > aspect_ratio > size; ``None`` when
    it names none (then the first input image or the model's default decides)."""
    if options.width is not None or options.height is not None:
        if options.width is None or options.height is None:
            raise SpecError("give both width and height, or neither", "width")
        if entry.family == "flux2":
            check_flux2_size(options.width, options.height, "width")
        else:
            check_size(options.width, options.height, "width")
        return options.width, options.height
    if options.aspect_ratio:
        return aspect_to_size(parse_aspect_ratio(options.aspect_ratio), entry.area)
    if options.size and options.size != "auto":
        return parse_size(options.size)
    return None


@dataclass(frozen=True)
class CheckedOptions:
    """A request's options that passed every rule needing no input image (what
    :func:`check_options` returns): an adapter checks them before it fetches any image, then
    builds the one spec with :meth:`build` once the images' sizes are known."""

    entry: ModelDefaults
    options: SpecOptions
    loras: tuple[LoraRef, ...]
    size: tuple[int, int] | None
    """From :func:`requested_size`."""

    def build(self, input_sizes: Sequence[tuple[int, int]] = ()) -> GenerationSpec:
        """The spec, with the model's defaults filled in and the seed drawn if none was given.

        ``input_sizes`` are the (width, height) of the request's input images, already decoded;
        the spec's ``input_images`` are filled in by the job service once they are stored.
        The size cascade ends here: the requested size, else the first input image's, else
        the model's default."""
        entry, options = self.entry, self.options
        check_input_count(entry, len(input_sizes))
        if self.size is not None:
            width, height = self.size
        elif input_sizes:
            width, height = size_from_image(entry, input_sizes[0])
        else:
            width, height = default_size(entry)
        return GenerationSpec(
            model=entry.id,
            prompt=options.prompt,
            width=width,
            height=height,
            seed=options.seed if options.seed is not None else new_seed(),
            steps=options.steps or entry.steps,
            guidance=options.guidance if options.guidance is not None else entry.guidance,
            output_format=options.output_format or entry.default_output_format,
            safety_tolerance=options.safety_tolerance,
            prompt_upsampling=options.prompt_upsampling,
            num_images=options.num_images,
            output_compression=options.output_compression,
            input_megapixels=round(sum(w * h for w, h in input_sizes) / 1e6, 3),
            webhook_url=options.webhook_url,
            webhook_secret=options.webhook_secret,
            protocol=options.protocol,
            response_format=options.response_format,
            user=options.user,
            partial_images=options.partial_images,
            loras=self.loras,
        )


def check_options(entry: ModelDefaults, options: SpecOptions, loras: Collection[str] = ()) -> CheckedOptions:
    """Check ``options`` against every rule that needs no input image: text, bounds, LoRAs
    (``loras`` are the names the server has) and the requested size. Raises
    :class:`SpecError` naming the offending field."""
    check_text(options.prompt, "prompt", PROMPT_LIMITS[options.protocol])
    for param in ("webhook_secret", "user"):
        value = getattr(options, param)
        if value is not None:
            check_text(value, param, 1024)
    if options.webhook_url is not None:
        check_text(options.webhook_url, "webhook_url", MAX_WEBHOOK_URL)
    _check_range(options.seed, 0, MAX_SEED, "seed")
    _check_range(options.steps, MIN_STEPS, MAX_STEPS, "steps")
    max_guidance = MAX_GUIDANCE_FLUX2 if entry.family == "flux2" else MAX_GUIDANCE
    _check_range(options.guidance, MIN_GUIDANCE, max_guidance, "guidance")
    _check_range(options.safety_tolerance, 0, 6, "safety_tolerance")
    _check_range(options.num_images, 1, MAX_IMAGES, "n")
    _check_range(options.output_compression, 0, 100, "output_compression")
    _check_range(options.partial_images, 0, MAX_PARTIAL_IMAGES, "partial_images")
    if options.guidance is not None and not math.isfinite(options.guidance):
        raise SpecError("guidance must be a finite number", "guidance")
    lora_refs = check_loras(options.loras, loras)
    return CheckedOptions(entry, options, lora_refs, requested_size(entry, options))


def build_spec(
    entry: ModelDefaults,
    options: SpecOptions,
    input_sizes: Sequence[tuple[int, int]] = (),
    loras: Collection[str] = (),
) -> GenerationSpec:
    """Check ``options`` against every rule and fill in the model's defaults: in one step,
    :func:`check_options` then :meth:`CheckedOptions.build`.

    ``input_sizes`` are the (width, height) of the request's input images, already decoded;
    ``loras`` are the LoRA names the server has. Raises :class:`SpecError` naming the offending field.
    """
    return check_options(entry, options, loras).build(input_sizes)
