"""``python -m fluxserve``: the command line."""

from fluxserve.cli import main

main()
