"""Service routes: health, readiness, and result files by signed URL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from fluxserve.api.state import get_state
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
