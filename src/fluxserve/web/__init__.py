"""The playground: a web page served by the server itself at ``/`` (and ``/playground``).

Plain HTML, CSS and JavaScript from package files (``static/``): no CDN, no network, no build
step. The page talks to the server's own public API (BFL routes, ``/v1/jobs``, the events
stream, the OpenAI routes) with the key the user enters, kept in the browser's local storage.
"""

from fluxserve.web.routes import router

__all__ = ["router"]
