"""Stand-in upstream providers on loopback: BFL's async API and an OpenAI-compatible Images API,
speaking their real wire protocols, for the gateway tests (the real hosts are unreachable here).

Knobs ride in the prompt, so one server serves every test at once:
``[slow=1.5]`` Ready after 1.5 s; ``[poll429=2]`` the first 2 polls answer 429 with
``Retry-After``; ``[submit429=1]`` the first submission of this prompt answers 429;
``[moderate=request]`` / ``[moderate=content]``; ``[error]`` the task ends in Error.
Result URLs work once (as an expiring signed URL would), then answer 403.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

BFL_KEY = "standin-bfl-key"
OPENAI_KEY = "standin-openai-key"
COLOR = (200, 30, 60)
"""Every stand-in image is this colour: the tests recognise the upstream's result by it."""
RETRY_AFTER_S = 1


def knob(prompt: str, name: str) -> str | None:
    """The value of ``[name=value]`` (or ``""`` for a bare ``[name]``) in ``prompt``."""
    m = re.search(r"\[" + re.escape(name) + r"(?:=([^\]]*))?\]", prompt)
    return None if m is None else (m.group(1) or "")


def image_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), COLOR).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Task:
    prompt: str
    created: float
    width: int
    height: int
    polls: int = 0


@dataclass
class Standin:
    """Both stand-ins in one app; what they saw, for the tests' assertions."""

    tasks: dict[str, Task] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    downloads: dict[str, int] = field(default_factory=dict)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: list[tuple[str, float]] = field(default_factory=list)
    """(prompt, time) of every 429 answered."""
    submit_attempts: dict[str, int] = field(default_factory=dict)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def result_url(self, data: bytes) -> str:
        rid = uuid.uuid4().hex
        self.results[rid] = data
        return f"{self.base_url}/results/{rid}.png"

    def app(self) -> FastAPI:  # noqa: C901 - one app, two protocols
        app = FastAPI()

        @app.get("/results/{rid}.png")
        async def result(rid: str) -> Response:
            self.downloads[rid] = self.downloads.get(rid, 0) + 1
            if rid not in self.results or self.downloads[rid] > 1:  # expired after one use
                return Response("<Error><Code>AuthenticationFailed</Code></Error>", 403)
            return Response(self.results[rid], media_type="image/png")

        def limited(prompt: str, counter: str, count: int) -> JSONResponse | None:
            n = int(knob(prompt, counter) or 0)
            if count < n:
                self.rate_limited.append((prompt, time.monotonic()))
                return JSONResponse(
                    {"detail": "Too many active tasks"}, 429, headers={"Retry-After": str(RETRY_AFTER_S)}
                )
            return None

        # BFL: POST /v1/{model}, GET /v1/get_result
        @app.get("/v1/get_result")
        async def get_result(id: str, request: Request) -> JSONResponse:
            if request.headers.get("x-key") != BFL_KEY:
                return JSONResponse({"detail": "Not authenticated"}, 403)
            task = self.tasks.get(id)
            if task is None:
                return JSONResponse({"id": id, "status": "Task not found"})
            task.polls += 1
            refused = limited(task.prompt, "poll429", task.polls - 1)
            if refused is not None:
                return refused
            slow = float(knob(task.prompt, "slow") or 0)
            elapsed = time.monotonic() - task.created
            if elapsed < slow:
                return JSONResponse({"id": id, "status": "Pending", "progress": round(elapsed / slow, 2)})
            moderated = knob(task.prompt, "moderate")
            if moderated == "request":
                return JSONResponse(
                    {
                        "id": id,
                        "status": "Request Moderated",
                        "details": {"Moderation Reasons": ["Derivative Works Filter"]},
                    }
                )
            if moderated == "content":
                return JSONResponse(
                    {"id": id, "status": "Content Moderated", "details": {"Moderation Reasons": ["NSFW"]}}
                )
            if knob(task.prompt, "error") is not None:
                return JSONResponse({"id": id, "status": "Error", "details": {"reason": "internal failure"}})
            url = self.result_url(image_bytes(task.width, task.height))
            return JSONResponse(
                {
                    "id": id,
                    "status": "Ready",
                    "result": {"sample": url, "prompt": task.prompt},
                    "progress": None,
                }
            )

        @app.post("/v1/{model}")
        async def submit(model: str, request: Request) -> JSONResponse:
            if request.headers.get("x-key") != BFL_KEY:
                return JSONResponse({"detail": "Not authenticated"}, 403)
            body = await request.json()
            prompt = str(body.get("prompt", ""))
            self.submissions.append({"protocol": "bfl", "model": model, **body})
            attempt = self.submit_attempts.get(prompt, 0)
            self.submit_attempts[prompt] = attempt + 1
            refused = limited(prompt, "submit429", attempt)
            if refused is not None:
                return refused
            tid = str(uuid.uuid4())
            self.tasks[tid] = Task(
                prompt, time.monotonic(), int(body.get("width", 1024)), int(body.get("height", 1024))
            )
            mp = round(self.tasks[tid].width * self.tasks[tid].height / 1e6, 2)
            return JSONResponse(
                {
                    "id": tid,
                    "polling_url": f"{self.base_url}/v1/get_result?id={tid}",
                    "cost": 7.0,
                    "input_mp": 0,
                    "output_mp": mp,
                }
            )

        # OpenAI-compatible: POST /openai/v1/images/generations and /edits
        async def openai_images(request: Request, fields: dict[str, Any], edit: bool) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {OPENAI_KEY}":
                return JSONResponse(
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                            "param": None,
                        }
                    },
                    401,
                )
            prompt = str(fields.get("prompt", ""))
            self.submissions.append({"protocol": "openai", "edit": edit, **fields})
            attempt = self.submit_attempts.get(prompt, 0)
            self.submit_attempts[prompt] = attempt + 1
            if int(knob(prompt, "submit429") or 0) > attempt:
                self.rate_limited.append((prompt, time.monotonic()))
                return JSONResponse(
                    {
                        "error": {
                            "message": "Rate limit reached",
                            "type": "requests",
                            "code": "rate_limit_exceeded",
                            "param": None,
                        }
                    },
                    429,
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            await asyncio.sleep(float(knob(prompt, "slow") or 0))
            if knob(prompt, "moderate") is not None:
                return JSONResponse(
                    {
                        "error": {
                            "message": "Your request was rejected by the safety system.",
                            "type": "image_generation_user_error",
                            "code": "moderation_blocked",
                            "param": None,
                        }
                    },
                    400,
                )
            if knob(prompt, "error") is not None:
                return JSONResponse(
                    {
                        "error": {
                            "message": "The server had an error",
                            "type": "server_error",
                            "code": None,
                            "param": None,
                        }
                    },
                    500,
                )
            w, h = (int(x) for x in str(fields.get("size", "1024x1024")).split("x"))
            data = []
            for _ in range(int(fields.get("n", 1))):
                png = image_bytes(w, h)
                if fields.get("response_format") == "url":
                    data.append({"url": self.result_url(png)})
                else:
                    data.append({"b64_json": base64.b64encode(png).decode()})
            return JSONResponse({"created": int(time.time()), "data": data, "usage": {"total_tokens": 0}})

        @app.post("/openai/v1/images/generations")
        async def generations(request: Request) -> JSONResponse:
            return await openai_images(request, await request.json(), edit=False)

        @app.post("/openai/v1/images/edits")
        async def edits(request: Request) -> JSONResponse:
            form = await request.form()
            fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            fields["images"] = len(form.getlist("image") + form.getlist("image[]"))
            return await openai_images(request, fields, edit=True)

        return app


class StandinServer:
    """A :class:`Standin` served by uvicorn on a loopback port in a thread."""

    def __init__(self, port: int) -> None:
        self.standin = Standin(port=port)
        config = uvicorn.Config(self.standin.app(), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> StandinServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "stand-in did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
