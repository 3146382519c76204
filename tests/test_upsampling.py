"""Prompt upsampling (issue: moderation and upsampling): the built-in rewriter, the chat
upsampler against a stand-in LLM on loopback (and its timeout fallback), and both through a real
server. Moderation is test_safety.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from conftest import poll_result
from fluxserve.upsampling import BuiltinUpsampler, ChatUpsampler


def test_builtin_upsampler_is_deterministic_and_adds_detail() -> None:
    u = BuiltinUpsampler()
    a = u.rewrite("a cat on a sofa", 7)
    assert a.startswith("a cat on a sofa, ") and len(a) > len("a cat on a sofa") + 20
    assert a == u.rewrite("a cat on a sofa", 7)
    assert {u.rewrite("a cat on a sofa", s) for s in range(10)} != {a}
    night = u.rewrite("a futuristic city at night", 3)
    assert "afternoon" not in night and "sun" not in night
    scene = u.rewrite("a red circle", 1, scene_vocabulary=True)
    assert scene.startswith("a ") and "red circle" in scene and "background" in scene


@pytest.fixture
def chat_server():  # type: ignore[no-untyped-def]
    """A local stand-in for a hosted LLM's /v1/chat/completions."""
    seen: list[dict] = []  # type: ignore[type-arg]
    delay = {"s": 0.0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            time.sleep(delay["s"])
            prompt = body["messages"][-1]["content"]
            data = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"LLM: {prompt}, studio lighting"},
                        }
                    ],
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen, delay
    httpd.shutdown()


def test_chat_upsampler_and_its_timeout_fallback(chat_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    url, seen, delay = chat_server
    u = ChatUpsampler(url, "my-llm", api_key="sk-test", timeout_s=0.5)
    out = asyncio.run(u.upsample("a lighthouse", 5))
    assert out == "LLM: a lighthouse, studio lighting"
    req = seen[-1]
    assert req["path"] == "/v1/chat/completions" and req["model"] == "my-llm"
    assert req["seed"] == 5 and req["temperature"] == 0 and req["auth"] == "Bearer sk-test"
    delay["s"] = 1.5
    slow = asyncio.run(u.upsample("a windmill", 5))
    assert slow == BuiltinUpsampler().rewrite("a windmill", 5)


def test_upsampling_through_the_server(server) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    kwargs: dict[str, Any] = dict(
        prompt="a lighthouse on a cliff",
        size="256x256",
        response_format="b64_json",
        extra_body={"prompt_upsampling": True, "seed": 21},
    )
    a = client.images.generate(**kwargs)
    b = client.images.generate(**kwargs)
    assert a.data and b.data
    revised = a.data[0].revised_prompt
    assert revised and revised.startswith("a lighthouse on a cliff, ") and revised != kwargs["prompt"]
    assert revised == b.data[0].revised_prompt and a.data[0].b64_json == b.data[0].b64_json
    plain = client.images.generate(prompt="a lighthouse on a cliff", size="256x256")
    assert plain.data and plain.data[0].revised_prompt is None
    r = httpx.post(
        f"{server.base_url}/v1/flux-kontext-pro",
        json={"prompt": "a red circle", "prompt_upsampling": True, "seed": 3},
    )
    result = poll_result(server.base_url, r.json()["id"])
    assert result["result"]["prompt"] != "a red circle" and "red circle" in result["result"]["prompt"]


def test_chat_upsampler_configured_on_the_server(make_server, chat_server) -> None:  # type: ignore[no-untyped-def]
    url, seen, _ = chat_server
    srv = make_server(
        upsampler="chat", upsampler_url=url, upsampler_model="local-llm", allow_private_urls="1"
    )
    r = httpx.post(
        f"{srv.base_url}/v1/flux-dev",
        json={"prompt": "a barn", "prompt_upsampling": True, "seed": 4, "width": 256, "height": 256},
    )
    result = poll_result(srv.base_url, r.json()["id"])
    assert result["result"]["prompt"] == "LLM: a barn, studio lighting"
    assert seen[-1]["model"] == "local-llm"
