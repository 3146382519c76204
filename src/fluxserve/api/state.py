"""What the routers share, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from fluxserve.accounts import Accounting
from fluxserve.api.throttle import FailedAuthThrottle
from fluxserve.catalog import ModelCatalog
from fluxserve.images import ImageLimits
from fluxserve.jobs import JobService, Worker
from fluxserve.loras import LoraLibrary
from fluxserve.settings import Settings
from fluxserve.storage import SignedUrls, Storage
from fluxserve.stores import KeyStore


@dataclass
class AppState:
    """The server's parts, as the routers see them."""

    settings: Settings
    catalog: ModelCatalog
    service: JobService
    worker: Worker
    storage: Storage
    signer: SignedUrls
    keys: KeyStore
    limits: ImageLimits
    loras: LoraLibrary = field(default_factory=lambda: LoraLibrary([]))
    """The LoRA adapters requests may name."""
    ready: bool = False
    """True once the models are loaded."""
    load_error: str | None = None
    accounting: Accounting | None = None
    """Accounts, scopes, credits and limits (None in apps built without them)."""
    throttle: FailedAuthThrottle = field(default_factory=FailedAuthThrottle)
    """Failed key checks per client address (guessing slowed down), one per app."""

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: ``public_url``, else the request's own host."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    def file_url(self, base_url: str, key: str) -> str:
        """A freshly signed download URL for a stored file."""
        url = self.storage.url(key, self.settings.url_ttl_s)
        return url if url.startswith(("http://", "https://")) else base_url + url


def get_state(request: Request) -> AppState:
    """FastAPI dependency: the app's :class:`AppState`."""
    state: AppState = request.app.state.fluxserve
    return state
