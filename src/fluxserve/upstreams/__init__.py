"""Upstream providers: models that fluxserve forwards to BFL's API or an OpenAI-compatible one.

A catalog entry with ``upstream = "NAME"`` gets the checkpoint ``upstream:NAME:MODEL``; the
:class:`~fluxserve.upstreams.engine.UpstreamEngine` runs those (submit, poll, download) and the
:class:`~fluxserve.upstreams.engine.RoutingEngine` sends every other checkpoint to the local engine.
The worker then moderates, encodes and stores the result like any local one.
"""

from fluxserve.upstreams.call import UpstreamError
from fluxserve.upstreams.engine import RoutingEngine, UpstreamEngine, with_upstreams

__all__ = ["RoutingEngine", "UpstreamEngine", "UpstreamError", "with_upstreams"]
