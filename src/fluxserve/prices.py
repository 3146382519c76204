"""List prices of the built-in model ids, in USD per image: the one table of default prices.

These are the hosted APIs' list prices (Black Forest Labs for the FLUX ids, OpenAI for the
OpenAI names), used as defaults: the server's model catalog prices its built-in models from
this table unless the settings override a price, and the SDK falls back to it when a server
publishes no ``GET /v1/prices``. This module must stay free of imports: the SDK uses it.
"""

from __future__ import annotations

from typing import Final

LIST_PRICES_USD: Final[dict[str, float]] = {
    "flux-kontext-pro": 0.04,
    "flux-kontext-max": 0.08,
    "flux-pro-1.1": 0.04,
    "flux-pro-1.1-ultra": 0.06,
    "flux-pro": 0.05,
    "flux-dev": 0.025,
    "gpt-image-1": 0.04,
    "gpt-image-1.5": 0.04,
    "gpt-image-1-mini": 0.02,
    "dall-e-3": 0.04,
    "dall-e-2": 0.02,
}
"""Model id -> USD per image, for every model id the catalog has built in."""
