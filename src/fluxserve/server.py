"""The whole server's app: the HTTP API (:mod:`fluxserve.api`) and, on top of it, the
playground page (:mod:`fluxserve.web`), whose routes use the API's schemas and key check. It
sits above both so that neither imports the other's factory."""

from __future__ import annotations

from fastapi import FastAPI

from fluxserve.api import create_app as create_api
from fluxserve.engines import Engine
from fluxserve.settings import Settings
from fluxserve.web import router as web_router


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The server's app: the API with the playground page at ``/`` (``engine`` defaults to the
    diffusers FLUX engine)."""
    app = create_api(settings, engine)
    app.include_router(web_router)
    return app
