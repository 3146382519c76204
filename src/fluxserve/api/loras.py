"""``GET /v1/loras``: the LoRA adapters that requests may name in ``loras``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fluxserve.api.auth import openai_auth
from fluxserve.api.state import AppState, get_state

router = APIRouter(tags=["Service"])


class LoraInput(BaseModel):
    """One entry of a request's ``loras``: an adapter name from ``GET /v1/loras`` and a scale."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128, description="An adapter name from GET /v1/loras (not a path).")
    scale: float = Field(default=1.0, description="Strength, -2 to 2; 0 is the same as leaving it out.")


def lora_pairs(loras: list[LoraInput] | None) -> list[tuple[str, float]]:
    """A request's ``loras`` as (name, scale) pairs for the spec builder."""
    return [(lora.name, lora.scale) for lora in loras or ()]


class LoraObject(BaseModel):
    """One adapter: its name (what requests send) and file size."""

    name: str
    object: str = "lora"
    size_bytes: int


class LoraList(BaseModel):
    """Every adapter in the configured ``lora_dirs``."""

    object: str = "list"
    data: list[LoraObject]


@router.get("/v1/loras", response_model=LoraList)
async def list_loras(
    owner: str | None = Depends(openai_auth), state: AppState = Depends(get_state)
) -> LoraList:
    """The adapters a request may name, sorted by name (the directories are read anew)."""
    files = state.loras.files()
    return LoraList(data=[LoraObject(name=n, size_bytes=files[n].size_bytes) for n in sorted(files)])
