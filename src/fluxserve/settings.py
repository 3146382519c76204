"""Settings, read once from defaults < TOML file < environment (``FLUXSERVE_*``) < explicit values.

No other module reads the environment: the app factory receives one :class:`Settings` object and
passes it down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "FLUXSERVE_"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/fluxserve``, else ``~/.local/share/fluxserve``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fluxserve"


def check_sizes(sizes: list[str]) -> list[str]:
    """``WIDTHxHEIGHT`` entries (16 to 8192 pixels a side), normalised to lower case."""
    out = []
    for size in sizes:
        w, sep, h = size.strip().lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit() and 16 <= int(w) <= 8192 and 16 <= int(h) <= 8192):
            raise ValueError(f"size {size!r}: write WIDTHxHEIGHT, e.g. 1024x1024 (16 to 8192 a side)")
        out.append(f"{int(w)}x{int(h)}")
    return out


class ModelOverride(BaseModel):
    """Per-model settings from config: point a model id at a checkpoint, change its defaults."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0.0, le=20.0)
    price: float | None = Field(default=None, ge=0.0)
    # Needed only for model ids that are not in the built-in catalog.
    family: Literal["kontext", "pro", "ultra", "flux2"] | None = None
    base: str | None = None
    """For a single-file transformer checkpoint (``.safetensors``/``.gguf``): a directory or
    hub repo id holding the other components (VAE, text encoders, scheduler, transformer config)."""
    memory: Literal["auto", "gpu", "model_offload", "group_offload", "sequential_offload"] | None = None
    """This model's memory mode (default: the top-level ``memory``)."""
    quantize: Literal["auto", "none", "fp8", "int8", "nf4"] | None = None
    """This model's transformer quantization (default: the top-level ``quantize``)."""
    warmup_sizes: list[str] | None = None
    """This model's compile warm-up sizes (default: the top-level ``warmup_sizes``)."""
    cache: Literal["none", "fbcache", "magcache", "taylorseer"] | None = None
    """This model's step caching (default: the top-level ``cache``)."""
    cache_threshold: float | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, ge=1, le=64)
    """This model's request batching (default: the top-level ``batch_size``)."""
    upstream: str | None = None
    """Forward this model to the upstream provider of that name (``[upstreams.NAME]``) instead
    of running a checkpoint here."""
    upstream_model: str | None = None
    """The model's name at the upstream (default: the model id)."""
    upstream_price: float | None = Field(default=None, ge=0.0)
    """What the upstream charges us per image, in USD, when its answer gives no cost (default:
    ``price``). Recorded with each result; users are charged ``price``."""
    route: Literal["local", "upstream", "overflow"] | None = None
    """Where a model with a checkpoint here *and* an ``upstream`` runs: ``local`` (here),
    ``upstream`` (forwarded; the default when only ``upstream`` is set) or ``overflow``: here,
    unless the estimated wait for a local engine passes ``overflow_wait_s`` (or no worker here
    takes the model), then at the upstream."""
    overflow_wait_s: float = Field(default=30.0, ge=0.0)
    """``route = "overflow"``: the estimated local wait, in seconds, beyond which a new job goes
    to the upstream."""

    @field_validator("warmup_sizes")
    @classmethod
    def _check_sizes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_sizes(value)


class UpstreamSettings(BaseModel):
    """An upstream provider that models may be forwarded to (``[upstreams.NAME]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bfl", "openai"]
    """``bfl``: BFL's async API (submit, poll); ``openai``: an OpenAI-compatible Images API."""
    base_url: str
    """``https://api.bfl.ai``, or an OpenAI-compatible base URL such as ``https://api.openai.com/v1``."""
    api_key_env: str | None = None
    """The environment variable holding the API key (read once, when the settings load)."""
    api_key: str | None = Field(default=None, repr=False)
    """The key itself; filled from ``api_key_env`` (prefer that over writing keys in files)."""
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    """OpenAI kind: the ``response_format`` asked for (None: send none, as GPT image models want)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Each HTTP call to the upstream (an OpenAI call that generates: ``max_wait_s``)."""
    max_wait_s: float = Field(default=600.0, gt=0)
    """Bound on one job's whole upstream time (submit, polls, back-offs, download): Error beyond."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    """First wait between polls; it grows by half each poll up to ``max_poll_interval_s``."""
    max_poll_interval_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    """Retries of a call that failed to connect or got a 5xx, with back-off (429s wait their
    ``Retry-After`` instead, within ``max_wait_s``)."""


class Settings(BaseModel):
    """Every knob of a fluxserve deployment. Field docs double as the reference in
    docs/operations.md#settings."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=default_data_dir)
    auth: Literal["keys", "none"] = "keys"
    """``keys``: once a key has been created here, every request needs a valid one, on any
    address and also after the last key is revoked (before the first key, a loopback server is
    open). ``none`` (``serve --no-auth``): no key checks at all; loopback only, and every start
    logs a warning."""
    public_url: str | None = None
    """Base URL clients reach the server at (behind a proxy). Default: the request's own host."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Reverse proxies (IPs or CIDRs, env: comma-separated) whose ``X-Forwarded-For`` names the
    client address that failed key checks are counted by. Empty: the socket peer is the client."""

    database_url: str | None = None
    """``postgresql://user:pass@host/db``: keep jobs, queue, webhooks and keys in PostgreSQL
    (shared by every API node and worker) instead of ``backend``. Apply its schema first with
    ``fluxserve db upgrade``."""
    backend: Literal["sqlite", "memory"] = "sqlite"
    """Where jobs, the queue, webhooks and keys live: a SQLite file in ``data_dir``, or memory
    (everything is lost when the process ends)."""
    storage: Literal["local", "memory"] = "local"
    """Where input and result files live: ``data_dir/files``, or memory."""
    storage_url: str | None = None
    """``s3://bucket/prefix``: keep files in an S3-compatible store instead (endpoint, region and
    credentials from the standard AWS settings, e.g. ``AWS_ENDPOINT_URL``)."""
    storage_presign: bool = False
    """With S3 storage: hand out the store's own presigned URLs (same expiry as ours) instead of
    this server's signed URLs that stream the object through the API node."""

    url_ttl_s: int = Field(default=600, ge=1)
    """Lifetime of a signed result URL. Polling again issues a fresh one while retained."""
    retention_s: int = Field(default=86_400, ge=1)
    """How long results (files and job rows) are kept after a job ends."""
    sweep_interval_s: float = Field(default=60.0, gt=0)
    secret_key: str | None = None
    """HMAC key for signed URLs. Default: a random key generated once into the data directory."""

    allow_private_urls: bool = False
    """Allow input-image URLs that resolve to private, loopback or link-local addresses."""
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    max_input_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_input_pixels: int = Field(default=25_000_000, ge=1024)
    """Largest input image accepted, in pixels."""
    max_input_aspect_ratio: float = Field(default=16.0, ge=1.0)
    """Input images longer than this on one side (16 = 16:1) are refused before decoding."""
    max_input_working_pixels: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Input images over this many pixels are scaled down (aspect kept) before generation:
    with the aspect bound, this caps the engine's work for any input."""
    max_request_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)

    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    default_checkpoint: str | None = None
    """Checkpoint for every model id without its own. Default: the built-in tiny model."""
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    """Upstream providers (``[upstreams.NAME]``) that ``models.ID.upstream`` forwards to."""
    memory: Literal["auto", "gpu", "model_offload", "group_offload", "sequential_offload"] = "auto"
    """How pipelines fit the device: ``auto`` picks the fastest mode that fits its free memory
    (everything on the GPU, then whole-model, group, then layer-by-layer CPU offload)."""
    quantize: Literal["auto", "none", "fp8", "int8", "nf4"] = "auto"
    """Transformer quantization: fp8/int8 through torchao, nf4 through bitsandbytes (CUDA only
    for fp8 and nf4). GGUF files are quantized already. ``auto``: fp8 (torchao float8 dynamic
    activations and weights) on CUDA GPUs of compute capability 8.9+ with torchao and no
    ``lora_dirs``, else none; the load log says which and why."""

    lora_dirs: list[Path] = Field(default_factory=list)
    """Directories of LoRA adapters (``.safetensors``) that requests may name in ``loras``
    (env ``FLUXSERVE_LORA_DIRS``: ``:``-separated). A name is a file's stem."""
    lora_cache_size: int = Field(default=8, ge=1)
    """LoRA adapters kept loaded per model; the least recently used is unloaded beyond it."""
    prompt_cache_size: int = Field(default=32, ge=0)
    """Text-encoder outputs kept for repeated prompts (FLUX.1 and Kontext); 0 turns it off."""
    fuse_qkv: bool | None = None
    """Fused QKV projections; unset: on CUDA when there are no ``lora_dirs``."""
    compile: bool | None = None
    """Regional ``torch.compile`` of the transformer's repeated blocks; unset: on CUDA when there
    are no ``lora_dirs`` and no group/sequential offload, off on CPU."""
    channels_last: bool | None = None
    """Channels-last VAE; unset: on CUDA."""
    attention_backend: str | None = None
    """A diffusers attention backend (``flash``, ``_native_cudnn`` ...); unset: PyTorch SDPA."""
    cache: Literal["none", "fbcache", "magcache", "taylorseer"] = "none"
    """Opt-in, lossy step caching for every model (per model: ``models.<id>.cache``)."""
    cache_threshold: float | None = Field(default=None, ge=0)
    """fbcache/magcache: the change below which a step is reused; taylorseer: the interval."""
    warmup_sizes: list[str] = Field(default_factory=lambda: ["1024x1024"])
    """``WIDTHxHEIGHT`` sizes generated once at load time when compiling, so that compilation
    happens before the server is ready (env: comma-separated; per model: ``models.<id>.warmup_sizes``)."""
    compile_cache_dir: Path | None = None
    """Compiled kernels kept between restarts (inductor and triton caches); default
    ``<data_dir>/compile-cache``."""

    moderation_enabled: bool = True
    """Prompt, input-image and output moderation. Off only per deployment, never per request."""
    moderation_thresholds: dict[str, list[float]] = Field(default_factory=dict)
    """Per category, 7 severities (tolerance 0..6) at or above which a prompt term blocks."""
    moderation_image_thresholds: list[float] | None = None
    """7 NSFW probabilities (tolerance 0..6) at or above which an image is blocked."""

    upsampler: Literal["builtin", "chat"] = "builtin"
    upsampler_url: str | None = None
    """Base URL of an OpenAI-compatible API (``.../v1``) for the ``chat`` upsampler."""
    upsampler_model: str = "gpt-4o-mini"
    upsampler_api_key: str | None = None
    upsampler_timeout_s: float = Field(default=10.0, gt=0)

    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    """First retry delay; it doubles per attempt up to ``webhook_max_delay_s``."""
    webhook_max_delay_s: float = Field(default=300.0, gt=0)
    webhook_max_attempts: int = Field(default=10, ge=1)
    """Defaults retry for about 20 minutes (5 s, 10 s, 20 s ... 300 s) before giving up."""
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    batch_size: int = Field(default=1, ge=1, le=64)
    """Images per pipeline call: queued text-to-image jobs of one model, size, step count,
    guidance and LoRA set run together up to this many images; 1 (the default) runs each job
    alone. Turn it up only where ``bench/gpu.py`` shows it pays on your GPU."""

    max_queued_jobs: int = Field(default=1000, ge=1)
    """Submissions beyond this many queued jobs are refused with 429 and ``Retry-After``."""
    account_max_active: int = Field(default=24, ge=1)
    """Active (queued + running) tasks per named account, when ``fluxserve accounts create``
    gives no ``--max-active`` (the default account has no such limit unless set)."""
    account_max_active_max_models: int = Field(default=6, ge=1)
    """Active tasks per account on ``*-max`` models (as BFL), for accounts with a limit."""
    topup_bonus_min_usd: float = Field(default=100.0, ge=0)
    """Top-ups of at least this many USD get ``topup_bonus_percent`` extra credits."""
    topup_bonus_percent: float = Field(default=10.0, ge=0)
    """The top-up bonus in percent (0: none)."""
    metrics_enabled: bool = False
    """Serve Prometheus metrics at ``/metrics`` (admin scope when keys exist)."""
    batch_delay_s: float = Field(default=60.0, ge=0)
    """Queue policy: a job nobody waits on (BFL) takes its place in the queue this many seconds
    after it was made, so synchronous OpenAI calls overtake recent BFL jobs but not old ones
    (with ``fair_share``, seconds of the fair clock: one image is one second)."""
    overflow_concurrency: int = Field(default=16, ge=1, le=256)
    """Jobs of ``route = "overflow"`` models that one process runs at their upstream at once
    (the upstream lane; BFL lets an account run 24 tasks at a time)."""
    fair_share: bool = True
    """Queue policy: the next job is taken by account, round-robin with the accounts'
    weights (keys without an account count as their own), so one account's batch does not
    delay the others; False: by arrival (``batch_delay_s`` still applies)."""
    max_attempts: int = Field(default=3, ge=1)
    """A job running when the server died this many times ends as Error instead of re-running."""
    png_compress_level: int = Field(default=1, ge=0, le=9)
    """zlib level of PNG results (PNG is lossless: OpenAI's ``output_compression`` applies to
    jpeg and webp only). 1 encodes a 1024x1024 image 1.6-2.3x faster than 6 for files 11-36 %
    larger (``bench/png_levels.py``); 6: the zlib default; 9: smallest, slowest."""

    gpus: list[str] = Field(default_factory=list)
    """Devices to run engine workers on, one worker each (``serve --gpus`` / ``worker --gpus``):
    ``0`` means ``cuda:0``; ``cpu``, ``cuda:1``, ``mps`` are taken as they are, and a device may
    repeat (``cpu,cpu``: two workers on the CPU). Empty: one worker on ``device``."""
    worker_models: list[str] = Field(default_factory=list)
    """Model ids this process's engine workers take (PostgreSQL dispatch; ``--models``).
    Empty: every model whose checkpoint loaded."""
    run_worker: bool = True
    """Run engine workers inside ``fluxserve serve``; false (``serve --no-worker``) makes a
    stateless API node that leaves generation to ``fluxserve worker`` processes."""
    stall_timeout_s: float = Field(default=30.0, ge=1.0)
    """PostgreSQL dispatch: a worker whose heartbeat is older than this is gone, and its job runs
    again elsewhere (heartbeats every quarter of it)."""

    sync_timeout_s: float = Field(default=600.0, gt=0)
    """How long a synchronous OpenAI call waits for its job before answering 504."""
    log_level: str = "info"

    @field_validator("lora_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        """``"/a:/b"`` (the environment's form) → two directories."""
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part]
        return value

    @field_validator("warmup_sizes")
    @classmethod
    def _check_sizes(cls, value: list[str]) -> list[str]:
        return check_sizes(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            try:
                out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies entry {entry!r}: write an IP address or CIDR network, "
                    "e.g. 10.0.0.5 or 10.0.0.0/24"
                ) from None
        return out

    @field_validator("gpus", "worker_models", "warmup_sizes", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """``"0,1"`` (the environment's and the command line's form) → two entries."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings: defaults, then ``config_file`` (TOML), then ``FLUXSERVE_*``, then
        ``overrides`` (command-line flags; ``None`` values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if raw.lstrip().startswith(("{", "[")):
                values[name] = json.loads(raw)
            elif field.annotation is bool:
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls.model_validate(values)
        for upstream in settings.upstreams.values():  # upstream API keys: read here, once
            if upstream.api_key is None and upstream.api_key_env:
                upstream.api_key = env.get(upstream.api_key_env)
        return settings

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "fluxserve.sqlite3"

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens on this machine only (where keys are optional)."""
        return is_loopback_host(self.host)
