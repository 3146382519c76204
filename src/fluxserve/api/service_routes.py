"""Service routes: health, readiness, prices, and result files by signed URL."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from fluxserve.api.auth import openai_auth
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.prices import USD_PER_CREDIT
from fluxserve.storage import CONTENT_TYPES

router = APIRouter(tags=["Service"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Any:
    """200 while the server can generate: models loaded (``unavailable`` lists those that failed,
    with the cause) and the worker able to use the job store; 503 while models load, if every
    model failed, or while the store fails (a full disk)."""
    state = get_state(request)
    if state.ready and state.worker.healthy:
        unavailable = state.catalog.unavailable_models()
        return {"status": "ready", "unavailable": unavailable} if unavailable else {"status": "ready"}
    if state.load_error:
        body = {"status": "error", "error": state.load_error}
    elif state.ready:
        body = {"status": "degraded", "error": f"the job store is failing: {state.worker.last_error}"}
    else:
        body = {"status": "loading"}
    return JSONResponse(status_code=503, content=body)


class ModelPrice(BaseModel):
    """What one model costs here. ``unit`` ``image``: ``usd`` per image. ``megapixel`` (FLUX.2):
    ``usd`` for the first output megapixel (or less), plus ``usd_per_extra_mp`` for each further
    output megapixel and ``usd_per_input_mp`` for each megapixel of input images."""

    model: str
    unit: Literal["image", "megapixel"]
    usd: float
    credits: float = Field(description="``usd`` in BFL credits (1 credit = USD 0.01).")
    usd_per_extra_mp: float | None = None
    usd_per_input_mp: float | None = None


class PriceTable(BaseModel):
    """``GET /v1/prices``: every model's price (``data``), and ``prices``, the same as one
    number per model (a 1 MP image, no input images) for clients that read only that."""

    object: Literal["list"] = "list"
    data: list[ModelPrice]
    prices: dict[str, float]


def model_price(entry: ModelEntry) -> ModelPrice:
    """One catalog entry's price, as ``GET /v1/prices`` lists it."""
    credits = round(entry.price / USD_PER_CREDIT, 4)
    mp = entry.megapixel_price
    if mp is None:
        return ModelPrice(model=entry.id, unit="image", usd=entry.price, credits=credits)
    return ModelPrice(
        model=entry.id,
        unit="megapixel",
        usd=entry.price,
        credits=credits,
        usd_per_extra_mp=mp.extra,
        usd_per_input_mp=mp.input,
    )


@router.get("/v1/prices", response_model=PriceTable, response_model_exclude_none=True)
async def list_prices(
    owner: str | None = Depends(openai_auth), state: AppState = Depends(get_state)
) -> PriceTable:
    """What each model costs on this server (the catalog's prices), so that clients can
    estimate a request's cost before running it."""
    return PriceTable(
        data=[model_price(e) for e in state.catalog], prices={e.id: e.price for e in state.catalog}
    )


@router.get("/v1/files/{key:path}", response_class=StreamingResponse)
async def get_file(
    key: str,
    request: Request,
    exp: str | None = Query(default=None, max_length=64),
    sig: str | None = Query(default=None, max_length=256),
) -> Any:
    """A result file, by signed URL (no API key needed; the signature is the credential)."""
    state = get_state(request)
    verdict = state.signer.verify(key, exp, sig)
    if verdict == "expired":
        raise HTTPException(403, "this URL has expired: poll get_result again for a fresh one")
    if verdict != "ok" or not key.startswith("results/"):
        raise HTTPException(403, "invalid signature")
    try:
        chunks = state.storage.stream(key)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise HTTPException(404, "this result has been deleted (past its retention time)") from exc
    ext = key.rsplit(".", 1)[-1]
    return StreamingResponse(chunks, media_type=CONTENT_TYPES.get(ext, "application/octet-stream"))
