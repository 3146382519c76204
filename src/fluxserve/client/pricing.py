"""What images cost: the caller's prices, else the server's published ones, else list prices."""

from __future__ import annotations

from typing import Literal

import httpx

from fluxserve.client.errors import ValidationError
from fluxserve.client.models import CostEstimate
from fluxserve.client.session import Session
from fluxserve.prices import LIST_PRICES_USD

DEFAULT_PRICES = LIST_PRICES_USD
"""The fallback table (USD per image) for servers without ``GET /v1/prices``."""


class PriceList:
    """Prices in USD per image, from three sources in order: custom, server, default."""

    def __init__(self, session: Session, custom: dict[str, float] | None = None) -> None:
        """``custom`` prices win over any other; the server's are fetched once, when needed."""
        self.session = session
        self.custom = dict(custom or {})
        self._server: dict[str, float] | None = None

    async def prices(self) -> tuple[dict[str, float], Literal["server", "default"]]:
        """The server's published prices (``GET /v1/prices``) if it has them, else defaults."""
        if self._server is None:
            self._server = await self._fetch_server_prices()
        if self._server:
            return self._server, "server"
        return dict(DEFAULT_PRICES), "default"

    async def estimate(self, model: str, n: int = 1) -> CostEstimate:
        """What ``n`` images of ``model`` cost; a model without a price is a ValidationError."""
        if model in self.custom:
            return CostEstimate(model, n, self.custom[model], round(self.custom[model] * n, 6), "custom")
        table, source = await self.prices()
        if model not in table:
            known = ", ".join(sorted(table))
            raise ValidationError(f"no price for model {model!r}; known: {known}")
        return CostEstimate(model, n, table[model], round(table[model] * n, 6), source)

    async def _fetch_server_prices(self) -> dict[str, float]:
        """The server's table, or an empty one if it has none; asked once, briefly, no retries."""
        try:
            r = await self.session.http.get(f"{self.session.base_url}/v1/prices", timeout=3.0)
            data = r.json() if r.status_code == 200 else {}
            return {str(k): float(v) for k, v in (data.get("prices") or {}).items()}
        except (httpx.HTTPError, ValueError):
            return {}
