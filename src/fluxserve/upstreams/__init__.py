"""Upstream providers: models that fluxserve forwards to BFL's API or an OpenAI-compatible one.

A catalog entry with ``upstream = "NAME"`` gets the checkpoint ``upstream:NAME:MODEL``; the
:class:`~fluxserve.upstreams.engine.UpstreamEngine` runs those (submit, poll, download) and the
:class:`~fluxserve.upstreams.engine.RoutingEngine` sends every other checkpoint to the local engine.
The worker then moderates, encodes and stores the result like any local one. A model with
``route = "overflow"`` keeps its local checkpoint; the jobs its overflow sends upstream run on
the :func:`~fluxserve.upstreams.engine.overflow_engine` (the upstream lane).
"""

from fluxserve.upstreams.call import UpstreamError, UpstreamNotAccepted
from fluxserve.upstreams.engine import RoutingEngine, UpstreamEngine, overflow_engine, with_upstreams

__all__ = [
    "RoutingEngine",
    "UpstreamEngine",
    "UpstreamError",
    "UpstreamNotAccepted",
    "overflow_engine",
    "with_upstreams",
]
