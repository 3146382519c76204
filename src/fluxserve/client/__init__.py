"""Python SDK for fluxserve and any BFL- or OpenAI-compatible FLUX server.

    from fluxserve.client import FluxClient

    with FluxClient("http://127.0.0.1:8000") as flux:
        result = flux.generate("a red circle", aspect_ratio="16:9", seed=42)
        result.save("circle.png")

``AsyncFluxClient`` has the same methods as coroutines; ``FluxClient`` runs them on its own
event loop. Both poll with capped exponential backoff, honour ``Retry-After`` on 429, download
each image the moment it is ready (before any URL can expire), and raise typed errors that
carry the job id. FLUX.2 ids (:data:`FLUX2_MODELS`) take up to eight reference images;
``credits()`` reads the balance; :func:`verify_webhook` checks a webhook delivery (fluxserve's
HMAC signature, or BFL's ``X-Webhook-Secret``).

The SDK needs only httpx and Pillow: nothing here imports the server (torch, FastAPI, ...).
"""

from fluxserve.client.async_client import DEFAULT_BASE_URL, AsyncFluxClient
from fluxserve.client.batch import item_key, load_batch_file
from fluxserve.client.composition import compose, stitch_horizontally
from fluxserve.client.errors import (
    AuthError,
    FluxError,
    GenerationTimeout,
    ModeratedError,
    ServerError,
    ValidationError,
)
from fluxserve.client.inputs import ImageInput
from fluxserve.client.model_ids import FLUX2_MODELS, max_input_images
from fluxserve.client.models import (
    BatchItemResult,
    BatchProgress,
    BatchReport,
    CostEstimate,
    Credits,
    GenerationResult,
)
from fluxserve.client.pricing import DEFAULT_PRICES
from fluxserve.client.sync import FluxClient
from fluxserve.client.webhooks import verify_secret_header, verify_signature, verify_webhook

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_PRICES",
    "FLUX2_MODELS",
    "AsyncFluxClient",
    "AuthError",
    "BatchItemResult",
    "BatchProgress",
    "BatchReport",
    "CostEstimate",
    "Credits",
    "FluxClient",
    "FluxError",
    "GenerationResult",
    "GenerationTimeout",
    "ImageInput",
    "ModeratedError",
    "ServerError",
    "ValidationError",
    "compose",
    "item_key",
    "load_batch_file",
    "max_input_images",
    "stitch_horizontally",
    "verify_secret_header",
    "verify_signature",
    "verify_webhook",
]
