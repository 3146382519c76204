"""What the routers share, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from fluxserve.catalog import ModelCatalog
from fluxserve.images import ImageLimits
from fluxserve.jobs import JobService
from fluxserve.jobs.idempotency import IdempotencyStore
from fluxserve.keys import ApiKeyStore
from fluxserve.settings import Settings
from fluxserve.storage import LocalStorage, SignedUrls


@dataclass
class AppState:
    settings: Settings
    catalog: ModelCatalog
    service: JobService
    storage: LocalStorage
    signer: SignedUrls
    keys: ApiKeyStore
    limits: ImageLimits
    idempotency: IdempotencyStore
    ready: bool = False
    load_error: str | None = None
    background: list[object] = field(default_factory=list)

    def base_url(self, request: Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    def file_url(self, base_url: str, key: str) -> str:
        return f"{base_url}/v1/files/{key}?{self.signer.query(key)}"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.fluxserve
    return state


def presented_key(request: Request) -> str | None:
    """The API key a request carries: ``x-key`` (BFL) or ``Authorization: Bearer`` (OpenAI)."""
    key = request.headers.get("x-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check_key(request: Request) -> tuple[bool, str | None]:
    """(allowed, key id). With no active key configured every request is allowed: the server
    then refuses to listen anywhere but loopback."""
    state = get_state(request)
    if not state.keys.any_active():
        return True, None
    key = presented_key(request)
    if key is None:
        return False, None
    key_id = state.keys.verify(key)
    return key_id is not None, key_id
