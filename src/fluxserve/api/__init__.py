"""The HTTP API: one FastAPI app, a router per protocol."""

from fluxserve.api.app import create_app

__all__ = ["create_app"]
