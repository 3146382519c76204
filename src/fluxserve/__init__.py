"""fluxserve: self-hosted FLUX image generation behind the BFL and OpenAI Images APIs."""

from fluxserve.settings import Settings

__all__ = ["Settings", "__version__"]
__version__ = "0.1.0"
