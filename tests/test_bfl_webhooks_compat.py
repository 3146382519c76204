"""Webhook deliveries that a receiver written for Black Forest Labs accepts unchanged.

BFL sends the job's ``webhook_secret`` back in an ``X-Webhook-Secret`` header; its receivers
compare that header with their secret and then read ``id``, ``status`` and ``result.sample``
from the JSON body. fluxserve sends the same header beside its own HMAC signature, and the
SDK's :func:`fluxserve.client.verify_webhook` checks either kind of delivery.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from fluxserve.client import verify_secret_header, verify_signature, verify_webhook
from fluxserve.client.webhooks import SECRET_HEADER, SIGNATURE_HEADER, sign

WEBHOOK_SECRET = "bfl-style-secret-123"


class BflStyleReceiver:
    """A receiver as BFL's documentation writes one: refuse a delivery whose
    ``X-Webhook-Secret`` is not our secret (401), else take the result and download the image
    at once (BFL's sample URLs expire)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.accepted: list[dict] = []  # type: ignore[type-arg]
        self.images: list[bytes] = []
        self.refused = 0
        self.raw: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.raw.append((dict(self.headers.items()), body))
                # --- the receiver's own logic, as in BFL's example ---
                received = self.headers.get("X-Webhook-Secret")
                if received is None or not hmac.compare_digest(received, outer.secret):
                    outer.refused += 1
                    self._answer(401, {"error": "invalid webhook secret"})
                    return
                payload = json.loads(body)
                if payload["status"] == "Ready":
                    outer.images.append(httpx.get(payload["result"]["sample"], timeout=10).content)
                outer.accepted.append(payload)
                self._answer(200, {"ok": True})

            def _answer(self, code: int, obj: dict) -> None:  # type: ignore[type-arg]
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/bfl-webhook"

    def wait(self, predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert predicate(), f"accepted {len(self.accepted)}, refused {self.refused}"

    def close(self) -> None:
        self.httpd.shutdown()


def _submit(base_url: str, prompt: str, url: str, secret: str) -> str:
    r = httpx.post(
        f"{base_url}/v1/flux-kontext-pro",
        json={"prompt": prompt, "seed": 3, "webhook_url": url, "webhook_secret": secret},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_a_bfl_receiver_takes_our_delivery_and_refuses_a_wrong_secret(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(allow_private_urls="1", webhook_max_attempts="1")
    good = BflStyleReceiver(WEBHOOK_SECRET)
    other = BflStyleReceiver("a-different-secret")
    try:
        job_id = _submit(srv.base_url, "a red circle", good.url, WEBHOOK_SECRET)
        refused_id = _submit(srv.base_url, "a blue square", other.url, WEBHOOK_SECRET)
        good.wait(lambda: good.accepted)
        other.wait(lambda: other.refused)
        # The BFL-style receiver accepted the delivery and could fetch the image.
        payload = good.accepted[0]
        assert payload["id"] == job_id and payload["status"] == "Ready"
        assert good.images[0][:8] == b"\x89PNG\r\n\x1a\n"  # flux-kontext-pro's default format
        assert good.refused == 0
        headers, body = good.raw[0]
        assert headers[SECRET_HEADER] == WEBHOOK_SECRET
        # Our HMAC signature travels beside it, and the SDK verifies the delivery both ways.
        assert verify_signature(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body)
        assert verify_webhook(WEBHOOK_SECRET, headers, body)
        assert not verify_webhook("wrong", headers, body)
        assert not verify_webhook(WEBHOOK_SECRET, headers, body + b" ")  # the signature binds the body
        # The receiver that expects another secret refused it; the attempt is recorded.
        assert other.accepted == []
        listing = httpx.get(f"{srv.base_url}/v1/jobs/{refused_id}/webhooks").json()
        assert [a["status_code"] for a in listing["attempts"]] == [401]
        assert listing["state"] == "failed"

        # A secret that cannot be a header value goes by the signature alone (and is delivered).
        job2 = _submit(srv.base_url, "a green star", good.url, "sécret\tkey")
        good.wait(lambda: len(good.raw) >= 2)
        headers2, body2 = good.raw[1]
        assert SECRET_HEADER not in headers2 and json.loads(body2)["id"] == job2
        assert verify_webhook("sécret\tkey", headers2, body2)
        # A delivery without a secret carries neither header.
        job3 = _submit(srv.base_url, "a white moon", good.url, "")
        good.wait(lambda: len(good.raw) >= 3)
        headers3, body3 = good.raw[2]
        assert json.loads(body3)["id"] == job3
        assert SECRET_HEADER not in headers3 and SIGNATURE_HEADER not in headers3
    finally:
        good.close()
        other.close()


def test_verify_webhook_reads_either_header_case_insensitively() -> None:
    body = b'{"id":"abc","status":"Ready"}'
    now = int(time.time())
    # BFL-style: only the secret header (any letter case, as plain dicts keep it).
    assert verify_webhook("s", {"x-webhook-secret": "s"}, body)
    assert not verify_webhook("s", {"X-Webhook-Secret": "t"}, body)
    assert not verify_webhook("s", {}, body)
    assert verify_secret_header("s", "s") and not verify_secret_header("s", None)
    # fluxserve-style: the signature wins; a bad one fails even beside the right secret.
    good = sign("s", now, body)
    assert verify_webhook("s", {"x-fluxserve-signature": good}, body)
    tampered = {"X-Fluxserve-Signature": sign("s", now, body + b"x"), "X-Webhook-Secret": "s"}
    assert not verify_webhook("s", tampered, body)
    stale = {"X-Fluxserve-Signature": sign("s", now - 3600, body), "X-Webhook-Secret": "s"}
    assert not verify_webhook("s", stale, body)
    assert verify_webhook("s", stale, body, tolerance_s=7200)
    assert not verify_signature("s", "t=notanumber,v1=00", body)
    assert not verify_signature("", good, body)
