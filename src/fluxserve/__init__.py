"""fluxserve: self-hosted FLUX image generation behind the BFL and OpenAI Images APIs.

The package root imports nothing: ``pip install fluxserve`` is the SDK (:mod:`fluxserve.client`)
and the client command line, which must import without the server's dependencies
(``pip install 'fluxserve[server]'``). Server code imports what it needs from its own modules,
e.g. ``from fluxserve.settings import Settings``.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
