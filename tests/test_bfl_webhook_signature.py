"""Deliveries carry Black Forest Labs' ``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw
body)>``, and a receiver that checks only that header, as one written for BFL does, accepts
them; the SDK's :func:`verify_webhook` checks it too."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from fluxserve.client.webhooks import BFL_SIGNATURE_HEADER, sign_bfl, verify_bfl_signature, verify_webhook

SECRET = "bfl-signature-secret"


class BflSignatureReceiver:
    """Refuses (401) a delivery whose ``X-BFL-Signature`` is not HMAC-SHA256(secret, raw body)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received = self.headers.get("X-BFL-Signature") or ""
                mac = hmac.new(outer.secret.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(received, f"sha256={mac}"):
                    outer.refused += 1
                    self.send_response(401)
                else:
                    outer.accepted.append((dict(self.headers.items()), body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bfl-webhook"

    def close(self) -> None:
        self.httpd.shutdown()


def test_a_receiver_checking_x_bfl_signature_accepts_the_delivery(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(allow_private_urls="1", webhook_max_attempts="1")
    receiver = BflSignatureReceiver(SECRET)
    try:
        before = int(time.time())
        r = httpx.post(
            f"{srv.base_url}/v1/flux-kontext-pro",
            json={"prompt": "a red circle", "seed": 3, "webhook_url": receiver.url, "webhook_secret": SECRET},
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while not (receiver.accepted or receiver.refused) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.refused == 0 and len(receiver.accepted) == 1
        headers, body = receiver.accepted[0]
        payload = json.loads(body)
        assert payload["id"] == job_id and payload["status"] == "Ready"
        assert payload["result"]["sample"].startswith("http")
        assert isinstance(payload["timestamp"], int) and before <= payload["timestamp"] <= time.time() + 1
        # The other headers still travel, and the SDK verifies the whole delivery.
        assert headers["X-Webhook-Secret"] == SECRET and "X-Fluxserve-Signature" in headers
        assert verify_webhook(SECRET, headers, body)
        assert not verify_webhook(SECRET, headers, body + b" ")
    finally:
        receiver.close()


def test_verify_webhook_accepts_a_good_x_bfl_signature_and_rejects_a_tampered_body() -> None:
    body = b'{"id":"abc","status":"Ready","result":{"sample":"https://x/y.png"},"timestamp":1}'
    header = sign_bfl("s", body)
    assert header == "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
    assert verify_webhook("s", {BFL_SIGNATURE_HEADER: header}, body)
    assert verify_webhook("s", {"x-bfl-signature": header}, body)  # any letter case
    assert not verify_webhook("s", {"X-BFL-Signature": header}, body.replace(b"abc", b"abd"))
    assert not verify_webhook("t", {"X-BFL-Signature": header}, body)
    # A wrong BFL signature fails even beside the right secret header.
    assert not verify_webhook("s", {"X-BFL-Signature": "sha256=00", "X-Webhook-Secret": "s"}, body)
    assert verify_bfl_signature("s", header, body) and not verify_bfl_signature("", header, body)
