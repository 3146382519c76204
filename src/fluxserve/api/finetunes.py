"""BFL's finetune routes on top of per-request LoRA.

``POST /v1/{id}-finetuned`` takes the body of ``POST /v1/{id}`` plus BFL's ``finetune_id`` and
``finetune_strength`` and runs it with that LoRA (a name from ``lora_dirs``) at that scale, so
code written for BFL's finetuned endpoints works with adapters kept on this server.
``GET /v1/my_finetunes`` and ``GET /v1/finetune_details`` answer in BFL's shapes from the same
LoRA directories. Training finetunes (``/v1/finetune``) is not offered.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model

from fluxserve.api.auth import bfl_auth
from fluxserve.api.bfl import Inputs, add_model_route
from fluxserve.api.bfl_schemas import INPUTS, INPUTS_BY_MODEL
from fluxserve.api.errors import bfl_validation_error
from fluxserve.api.loras import LoraInput
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.spec import SpecError, check_loras

DEFAULT_STRENGTH = 1.2
"""BFL's default ``finetune_strength``."""


class MyFinetunesResponse(BaseModel):
    """BFL's ``GET /v1/my_finetunes``: the finetune ids this key may use (the LoRA names)."""

    finetunes: list[str]


class FinetuneDetailResponse(BaseModel):
    """BFL's ``GET /v1/finetune_details``."""

    finetune_details: dict[str, Any]


def finetuned_inputs(inputs_cls: type[Inputs]) -> type[Inputs]:
    """``inputs_cls`` with BFL's two finetune fields."""
    model: type[Inputs] = create_model(  # type: ignore[call-overload]
        inputs_cls.__name__.replace("Inputs", "") + "FinetunedInputs",
        __base__=inputs_cls,
        finetune_id=(
            str,
            Field(max_length=128, description="The LoRA to use: a name from GET /v1/my_finetunes."),
        ),
        finetune_strength=(
            float,
            Field(default=DEFAULT_STRENGTH, ge=0.0, le=2.0, description="0: no influence; up to 2."),
        ),
    )
    return model


def apply_finetune(body: Any, state: AppState) -> JSONResponse | None:
    """Turn ``finetune_id``/``finetune_strength`` into the body's first LoRA, or answer a 422
    when the server has no such LoRA."""
    finetune_id: str = body.finetune_id
    strength: float = body.finetune_strength
    try:
        check_loras([(finetune_id, strength)], state.loras.names())
    except SpecError as exc:
        return bfl_validation_error(["body", "finetune_id"], exc.message)
    body.loras = [LoraInput(name=finetune_id, scale=strength), *(body.loras or [])]
    return None


def make_finetune_router(models: list[ModelEntry]) -> APIRouter:
    """``POST /v1/{id}-finetuned`` for every BFL model, and the two finetune listing routes."""
    router = APIRouter(tags=["BFL API"])

    for entry in models:
        if not entry.bfl_route:
            continue
        add_model_route(
            router,
            f"/v1/{entry.id}-finetuned",
            entry,
            finetuned_inputs(INPUTS_BY_MODEL.get(entry.id) or INPUTS[entry.family]),
            summary=f"Generate an image with {entry.id} and a finetune (a LoRA on this server)",
            operation_id=f"generate_{entry.id.replace('-', '_').replace('.', '_')}_finetuned",
            prepare=apply_finetune,
        )

    @router.get("/v1/my_finetunes", response_model=MyFinetunesResponse)
    async def my_finetunes(
        owner: str | None = Depends(bfl_auth), state: AppState = Depends(get_state)
    ) -> MyFinetunesResponse:
        """The finetune ids this server has: the LoRA names of ``lora_dirs``."""
        return MyFinetunesResponse(finetunes=state.loras.names())

    @router.get("/v1/finetune_details", response_model=FinetuneDetailResponse)
    async def finetune_details(
        finetune_id: str = Query(..., max_length=128),
        owner: str | None = Depends(bfl_auth),
        state: AppState = Depends(get_state),
    ) -> FinetuneDetailResponse:
        """What this server knows of one finetune (a LoRA file): its name and size."""
        lora = state.loras.files().get(finetune_id)
        if lora is None:
            raise HTTPException(
                404, f"finetune '{finetune_id[:128]}' not found; GET /v1/my_finetunes lists them"
            )
        return FinetuneDetailResponse(
            finetune_details={"finetune_id": lora.name, "format": "lora", "size_bytes": lora.size_bytes}
        )

    return router
