"""The OpenAI Images API: one request that answers with the image itself.

``POST /v1/images/generations`` (JSON) or, with input images, ``POST /v1/images/edits``
(multipart); ``response_format=b64_json`` so that no URL is involved. The FLUX options
(aspect_ratio, seed, ...) travel as extra fields, as ``extra_body`` sends them.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import httpx

from fluxserve.client.errors import raise_for_response
from fluxserve.client.models import GenerationResult
from fluxserve.client.protocol import GenerationRequest, format_of, idempotency_headers
from fluxserve.client.session import Session


class OpenAIImagesApi:
    """The OpenAI protocol (:class:`~fluxserve.client.protocol.ImagesApi`)."""

    def __init__(self, session: Session) -> None:
        """Talk to the session's server."""
        self.session = session

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate (or edit, with input images) and decode the answer; no job id, no URL."""
        # OpenAI responses carry no seed: draw one here so that the result can report it.
        params = dict(request.params)
        params.setdefault("seed", int.from_bytes(os.urandom(4), "big"))
        resp = await self._post(request, params)
        raise_for_response(resp)
        data = resp.json()
        item = data["data"][0]
        image = base64.b64decode(item["b64_json"])
        t_done = time.monotonic()
        return GenerationResult(
            image=image,
            seed=params.get("seed"),
            prompt=item.get("revised_prompt") or request.prompt,
            model=request.model,
            job_id=None,
            output_format=data.get("output_format") or format_of(image),
            timings={"total_s": t_done - request.started, "wait_s": t_done - request.started},
        )

    async def _post(self, request: GenerationRequest, params: dict[str, Any]) -> httpx.Response:
        """The generations request, or the edits request when there are input images."""
        base_url = self.session.base_url
        headers = idempotency_headers()
        if request.images:
            files = [
                ("image[]", (f"image{i}.png", data, "application/octet-stream"))
                for i, data in enumerate(request.images)
            ]
            form = {"prompt": request.prompt, "model": request.model, "response_format": "b64_json"}
            form.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()})
            return await self.session.request(
                "POST", f"{base_url}/v1/images/edits", data=form, files=files, headers=headers
            )
        body = {"prompt": request.prompt, "model": request.model, "response_format": "b64_json", **params}
        return await self.session.request(
            "POST", f"{base_url}/v1/images/generations", json=body, headers=headers
        )
