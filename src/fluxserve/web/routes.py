"""Routes of the playground: the page, its static files, and the model details it needs."""

from __future__ import annotations

from fractions import Fraction
from importlib import resources

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from fluxserve.api import bfl_schemas
from fluxserve.api.auth import bfl_auth
from fluxserve.api.openai_schemas import ImageOptions
from fluxserve.api.state import AppState, get_state
from fluxserve.catalog import ModelEntry
from fluxserve.spec import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_INPUT_IMAGES,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
)
from fluxserve.spec.geometry import aspect_to_size

router = APIRouter(tags=["Playground"])

ASPECT_RATIOS: tuple[str, ...] = (
    "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21",
)  # fmt: skip
"""The aspect ratios the page offers (BFL's documented range, widest first)."""

_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html"}
# The page loads nothing from elsewhere; result images may come from an S3 store's presigned URL.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    return resources.files("fluxserve.web").joinpath("static", name).read_bytes()


def _static_names() -> frozenset[str]:
    folder = resources.files("fluxserve.web").joinpath("static")
    return frozenset(p.name for p in folder.iterdir() if p.name.rsplit(".", 1)[-1] in _TYPES)


STATIC_FILES = _static_names()
"""The files under ``/playground/static/`` (only these are served)."""


@router.get("/", include_in_schema=False)
@router.get("/playground", include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page."""
    return HTMLResponse(_static("index.html"), headers=_HEADERS)


@router.get("/playground/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """One of the page's files (scripts, styles, icon)."""
    if name not in STATIC_FILES:
        raise HTTPException(404, "Not Found")
    return Response(_static(name), media_type=_TYPES[name.rsplit(".", 1)[-1]], headers=_HEADERS)


class PlaygroundModel(BaseModel):
    """What the page needs to know about one model to build its form."""

    id: str
    family: str
    """``kontext`` (aspect ratio, input images), ``pro`` (width and height) or ``ultra``."""
    bfl_route: bool
    """Served as ``POST /v1/{id}``; else only through the OpenAI routes."""
    takes_images: bool
    steps: int
    """Default denoising steps."""
    guidance: float
    """Default guidance."""
    price: float
    """USD per image."""
    default_output_format: str
    area: int
    """Pixels of an image made from an aspect ratio."""
    sizes: dict[str, tuple[int, int]]
    """Aspect ratio -> the (width, height) it gives with this model."""
    available: bool
    """False when the model's checkpoint failed to load."""
    fields: list[str]
    """The request fields its route takes (BFL body, else the OpenAI one): the form shows
    only these (FLUX.2 routes, for one, refuse fields they do not know)."""
    max_safety_tolerance: int
    """The highest ``safety_tolerance`` its route takes."""


class PlaygroundConfig(BaseModel):
    """The catalog's details and the request bounds, for the page's form."""

    models: list[PlaygroundModel]
    min_steps: int = MIN_STEPS
    max_steps: int = MAX_STEPS
    min_guidance: float = MIN_GUIDANCE
    max_guidance: float = MAX_GUIDANCE
    max_images: int = MAX_IMAGES
    max_input_images: int = MAX_INPUT_IMAGES


def _body_class(entry: ModelEntry) -> type[BaseModel]:
    """The body model of the route that serves ``entry`` (as the BFL router picks it)."""
    if not entry.bfl_route:
        return ImageOptions
    by_model: dict[str, type[BaseModel]] = getattr(bfl_schemas, "INPUTS_BY_MODEL", {})
    inputs: dict[str, type[BaseModel]] = dict(bfl_schemas.INPUTS)
    return by_model.get(entry.id) or inputs.get(entry.family) or ImageOptions


def _maximum(body: type[BaseModel], name: str, default: int) -> int:
    prop = body.model_json_schema().get("properties", {}).get(name, {})
    return int(prop.get("maximum", default))


def _model(entry: ModelEntry, unavailable: dict[str, str]) -> PlaygroundModel:
    body = _body_class(entry)
    return PlaygroundModel(
        id=entry.id,
        family=entry.family,
        bfl_route=entry.bfl_route,
        takes_images=entry.takes_images,
        steps=entry.steps,
        guidance=entry.guidance,
        price=entry.price,
        default_output_format=entry.default_output_format,
        area=entry.area,
        sizes={r: aspect_to_size(Fraction(*map(int, r.split(":"))), entry.area) for r in ASPECT_RATIOS},
        available=entry.id not in unavailable,
        fields=sorted(body.model_fields),
        max_safety_tolerance=_maximum(body, "safety_tolerance", 6),
    )


@router.get("/playground/config", response_model=PlaygroundConfig)
async def playground_config(
    owner: str | None = Depends(bfl_auth), state: AppState = Depends(get_state)
) -> PlaygroundConfig:
    """Each model's family, defaults, price and the pixel size of each aspect ratio, with the
    request bounds: what the playground's form is built from (the list itself comes from
    ``GET /v1/models``)."""
    unavailable = state.catalog.unavailable_models()
    return PlaygroundConfig(models=[_model(e, unavailable) for e in state.catalog])
