"""List prices of the built-in model ids, and what one request costs: the one table of prices.

These are the hosted APIs' list prices (Black Forest Labs for the FLUX ids, OpenAI for the
OpenAI names), used as defaults: the server's model catalog prices its built-in models from
this table unless the settings override a price, and the SDK falls back to it when a server
publishes no ``GET /v1/prices``.

FLUX.1 models cost a fixed amount per image. FLUX.2 models are priced per megapixel, as BFL
prices them: the first output megapixel (or less) at a flat price, each further output
megapixel and each megapixel of input images at a smaller one, so that
``usd = first + max(0, output_mp - 1) * extra + input_mp * input``. Their entry in
:data:`LIST_PRICES_USD` is the flat first-megapixel price: what a 1 MP text-to-image costs.

This module must stay free of imports: the SDK uses it.
"""

from __future__ import annotations

from typing import Final, NamedTuple

USD_PER_CREDIT: Final = 0.01
"""BFL bills in credits: one credit is one US cent."""

LIST_PRICES_USD: Final[dict[str, float]] = {
    "flux-kontext-pro": 0.04,
    "flux-kontext-max": 0.08,
    "flux-pro-1.1": 0.04,
    "flux-pro-1.1-ultra": 0.06,
    "flux-pro": 0.05,
    "flux-dev": 0.025,
    "flux-2-pro": 0.03,
    "flux-2-max": 0.07,
    "flux-2-flex": 0.05,
    "flux-2-klein-4b": 0.014,
    "flux-2-klein-9b": 0.015,
    "gpt-image-1": 0.04,
    "gpt-image-1.5": 0.04,
    "gpt-image-1-mini": 0.02,
    "gpt-image-2": 0.04,
    "dall-e-3": 0.04,
    "dall-e-2": 0.02,
}
"""Model id -> USD per image (FLUX.2: per first megapixel), for every built-in model id."""


class MegapixelPrice(NamedTuple):
    """A per-megapixel price (FLUX.2), in USD."""

    first: float
    """The first output megapixel, or less: a flat price."""
    extra: float
    """Each further output megapixel."""
    input: float
    """Each megapixel of input (reference) images."""


MEGAPIXEL_PRICES_USD: Final[dict[str, MegapixelPrice]] = {
    # BFL's FLUX.2 prices in credits (cents): first MP, each further MP; input MP are priced
    # as further MP. Sources: docs.bfl.ai/quick_start/pricing and BFL's bfl-api skill.
    "flux-2-pro": MegapixelPrice(0.03, 0.015, 0.015),
    "flux-2-max": MegapixelPrice(0.07, 0.03, 0.03),
    "flux-2-flex": MegapixelPrice(0.05, 0.05, 0.05),
    "flux-2-klein-4b": MegapixelPrice(0.014, 0.001, 0.001),
    "flux-2-klein-9b": MegapixelPrice(0.015, 0.002, 0.002),
}
"""Model id -> per-megapixel price, for the models priced that way (their first megapixel is
their :data:`LIST_PRICES_USD` entry)."""


class Cost(NamedTuple):
    """What one request costs, and the sizes it was priced on."""

    usd: float
    credits: float
    """``usd`` in BFL credits (1 credit = USD 0.01)."""
    output_mp: float
    """Megapixels of one output image."""
    input_mp: float
    """Megapixels of the input images together."""


def megapixels(pixels: float) -> float:
    """Pixels as megapixels (10^6 pixels, as BFL counts them), rounded to 3 decimals."""
    return round(pixels / 1e6, 3)


def request_cost(
    per_image_usd: float,
    per_megapixel: MegapixelPrice | None,
    width: int,
    height: int,
    input_mp: float = 0.0,
    num_images: int = 1,
) -> Cost:
    """The cost of ``num_images`` images of ``width`` x ``height`` made from input images of
    ``input_mp`` megapixels: per image, or per megapixel when ``per_megapixel`` is given
    (each image is priced on its own, inputs included, as separate BFL requests would be)."""
    output_mp = megapixels(width * height)
    input_mp = round(input_mp, 3)
    if per_megapixel is None:
        one = per_image_usd
    else:
        first, extra, per_input = per_megapixel
        one = first + max(0.0, output_mp - 1.0) * extra + input_mp * per_input
    usd = round(one * num_images, 6)
    return Cost(usd, round(usd / USD_PER_CREDIT, 4), output_mp, input_mp)
