"""Code that makes the models fluxserve ships; the server never imports it, the wheel leaves it out.

Run its commands from the repository root (``python -m training.embedded.train ...``), where
``training`` is importable without installing anything.
"""
