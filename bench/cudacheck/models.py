"""FLUX architectures from their published configs, built with random weights and saved as
diffusers directories (nothing can be downloaded on the GPU machine), and random LoRAs for them.

The configs, the module maker and the Qwen3 word tokenizer are the GPU benchmark's
(:mod:`gpubench.configs`, which cites where each config comes from, and :mod:`gpubench.builders`);
``TINY`` is the same shapes scaled down for ``--tiny`` on the CPU.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpubench import GIB
from gpubench.builders import make_module, word_tokenizer
from gpubench.configs import FLUX1_DEV_SCHEDULER, FULL

WORDS = ["a", "photo", "of", "red", "blue", "cat", "dog", "on", "the", "with", "in"]
"""Words the CLIP and T5 test tokenizers know."""


def _flux1_modules(
    arch: dict[str, dict[str, Any]], device: torch.device | str, dtype: torch.dtype
) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return {
        "transformer": make_module(
            device, dtype, lambda: FluxTransformer2DModel(**arch["flux1_transformer"])
        ),
        "text_encoder_2": make_module(device, dtype, lambda: T5EncoderModel(T5Config(**arch["t5"]))),
        "text_encoder": make_module(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**arch["clip"]))),
        "vae": make_module(device, dtype, lambda: AutoencoderKL(**arch["flux1_vae"])),
    }


def _klein_modules(
    arch: dict[str, dict[str, Any]], device: torch.device | str, dtype: torch.dtype
) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return {
        "transformer": make_module(
            device, dtype, lambda: Flux2Transformer2DModel(**arch["klein_transformer"])
        ),
        "text_encoder": make_module(
            device, dtype, lambda: Qwen3ForCausalLM(Qwen3Config(**arch["qwen3"], pad_token_id=0))
        ),
        "vae": make_module(device, dtype, lambda: AutoencoderKLFlux2(**arch["flux2_vae"])),
    }


def component_bytes(model: str, arch: dict[str, dict[str, Any]] = FULL, itemsize: int = 2) -> dict[str, int]:
    """Bytes of each component of ``model`` (``flux1-dev``, ``flux2-klein-4b``) at ``itemsize``
    bytes a weight, counted on the meta device (nothing allocated): what the engine's
    ``component_bytes`` reads from the files of a full-size checkpoint."""
    modules = (_flux1_modules if model == "flux1-dev" else _klein_modules)(arch, "meta", torch.bfloat16)
    return {name: sum(p.numel() for p in m.parameters()) * itemsize for name, m in modules.items()}


def build_flux1_dev(
    out: Path, arch: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype
) -> None:
    """FLUX.1 [dev] with random weights, saved as a diffusers directory in ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from fluxserve.embedded.builder import make_clip_tokenizer, make_t5_tokenizer

    tmp = Path(tempfile.mkdtemp())
    tokenizer, _ = make_clip_tokenizer(WORDS, tmp)
    tokenizer_2, _ = make_t5_tokenizer(WORDS)
    torch.manual_seed(0)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **_flux1_modules(arch, device, dtype),
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]
    shutil.rmtree(tmp, ignore_errors=True)


def link_kontext(out: Path, dev: Path) -> None:
    """FLUX.1 Kontext [dev]: [dev]'s architecture, so its components are links to [dev]'s files
    (no second copy on disk) under a FluxKontextPipeline model_index.json."""
    out.mkdir(parents=True, exist_ok=True)
    for part in dev.iterdir():
        if part.is_dir():
            (out / part.name).symlink_to(part.resolve(), target_is_directory=True)
    index = json.loads((dev / "model_index.json").read_text())
    index["_class_name"] = "FluxKontextPipeline"
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def build_klein(out: Path, arch: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype) -> None:
    """FLUX.2 [klein] 4B (Qwen3 text encoder) with random weights, saved in ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    torch.manual_seed(0)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER),
        tokenizer=word_tokenizer(),
        is_distilled=True,
        **_klein_modules(arch, device, dtype),
    )
    pipe.save_pretrained(str(out))  # type: ignore[attr-defined]


def make_lora(out: Path, transformer_config: dict[str, Any], seed: int, rank: int = 4) -> Path:
    """A random LoRA on the attention projections of a FLUX.1 transformer, made with peft (its
    layer names and shapes, on the meta device: no 12 B model is built) and saved as diffusers
    saves trained LoRAs."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**transformer_config)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
    )
    transformer.add_adapter(config)  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for key, meta in get_peft_model_state_dict(transformer).items():
        fan_in = meta.shape[1]
        # x A^T B^T about as large as the base projection's output: a visible change, no overflow
        layers[key] = torch.randn(tuple(meta.shape), generator=g) / fan_in**0.5
    tmp = out.parent / f".{out.stem}"
    FluxPipeline.save_lora_weights(str(tmp), transformer_lora_layers=layers)
    (tmp / "pytorch_lora_weights.safetensors").rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def dir_gib(path: Path) -> float:
    """Size of the files under ``path`` (links not followed)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / GIB


class Checkpoints:
    """Builds each checkpoint once under ``root`` (``flux1-dev``, ``flux1-kontext-dev`` linking
    to dev's files, ``flux2-klein-4b``, ``loras``) and logs what it cost."""

    BUILD_S = {"flux1-dev": 70, "flux1-kontext-dev": 1, "flux2-klein-4b": 35, "loras": 5}
    """Seconds a build takes on one H100 (estimates for the budget)."""

    def __init__(
        self,
        root: Path,
        arch: dict[str, dict[str, Any]],
        device: torch.device,
        dtype: torch.dtype,
        log: Callable[[str], None],
    ) -> None:
        self.root = root
        self.arch = arch
        self.device = device
        self.dtype = dtype
        self.log = log
        root.mkdir(parents=True, exist_ok=True)

    def built(self, name: str) -> bool:
        """Whether ``name`` is built already."""
        return (self.root / name / ".complete").exists()

    def estimate_s(self, names: list[str]) -> float:
        """Seconds to build those of ``names`` not built yet (Kontext needs dev's files)."""
        todo = {n for n in names if not self.built(n)}
        if "flux1-kontext-dev" in todo and not self.built("flux1-dev"):
            todo.add("flux1-dev")
        return sum(self.BUILD_S[n] for n in todo)

    def drop(self, keep: set[str]) -> None:
        """Delete the checkpoints not in ``keep`` (the disk holds 64 GiB: dev's 31 and klein's
        15 GiB should not be there at once); dev's files stay while Kontext, which links to
        them, is kept."""
        if "flux1-kontext-dev" in keep:
            keep = keep | {"flux1-dev"}
        for name in self.BUILD_S:
            if name not in keep and (self.root / name).exists():
                shutil.rmtree(self.root / name, ignore_errors=True)
                self.log(f"deleted {name} (no later check needs it)")

    def path(self, name: str) -> Path:
        """The directory of ``name``, built if missing."""
        out = self.root / name
        if self.built(name):
            return out
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        if name == "flux1-dev":
            build_flux1_dev(out, self.arch, self.device, self.dtype)
        elif name == "flux1-kontext-dev":
            link_kontext(out, self.path("flux1-dev"))
        elif name == "flux2-klein-4b":
            build_klein(out, self.arch, self.device, self.dtype)
        elif name == "loras":
            out.mkdir(parents=True)
            for lora, seed in (("ink", 1), ("chalk", 2)):
                make_lora(out / f"{lora}.safetensors", self.arch["flux1_transformer"], seed)
        else:
            raise ValueError(f"unknown checkpoint {name!r}")
        (out / ".complete").touch()
        gc.collect()  # the built modules hold GPU memory until their reference cycles go
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.log(
            f"built {name} in {time.perf_counter() - start:.1f} s: {dir_gib(out):.2f} GiB at {out} "
            f"(disk free {shutil.disk_usage(self.root).free / GIB:.1f} GiB)"
        )
        return out
