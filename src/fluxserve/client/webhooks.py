"""Checking that a webhook delivery came from the server, for the code that receives it.

A job submitted with ``webhook_url`` and ``webhook_secret`` is POSTed to that URL when it ends.
fluxserve sends the secret three ways:

- ``X-Fluxserve-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>``,
  which proves the body and its time without revealing the secret (:func:`verify_signature`);
- ``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``, Black Forest Labs'
  signature (:func:`verify_bfl_signature`), which has no timestamp of its own: the body's
  ``timestamp`` field is the delivery's time;
- ``X-Webhook-Secret: <secret>``, the header Black Forest Labs sends, so that a receiver
  written for BFL works unchanged (:func:`verify_secret_header`).

:func:`verify_webhook` checks a delivery from either kind of server: the signatures when there
are any (each one present must hold), else the secret header. The server signs with :func:`sign`
and :func:`sign_bfl`, so both ends share them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Fluxserve-Signature"
"""fluxserve's HMAC signature of a delivery."""
DELIVERY_HEADER = "X-Fluxserve-Delivery"
"""One id per delivery, the same on every retry of it: a receiver drops repeats by it."""
BFL_SIGNATURE_HEADER = "X-BFL-Signature"
"""Black Forest Labs' HMAC signature of a delivery: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
SECRET_HEADER = "X-Webhook-Secret"
"""Black Forest Labs' header: the webhook secret itself."""
DEFAULT_TOLERANCE_S = 300.0
"""How old (or how far in the future) a signature's timestamp may be."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>." + body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def sign_bfl(secret: str, body: bytes) -> str:
    """The ``X-BFL-Signature`` header's value: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_bfl_signature(secret: str, header: str | None, body: bytes) -> bool:
    """Whether ``header`` (``X-BFL-Signature``) is the HMAC-SHA256 of the raw ``body`` under
    ``secret``, compared in constant time. It carries no time: check the body's ``timestamp``
    (and drop repeats by ``X-Fluxserve-Delivery``) where replays matter."""
    if not header or not secret:
        return False
    return hmac.compare_digest(sign_bfl(secret, body).encode(), header.strip().encode())


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (``X-Fluxserve-Signature``) signs the raw ``body`` under ``secret``
    with a timestamp within ``tolerance_s`` of ``now`` (default: the current time)."""
    if not header or not secret:
        return False
    try:
        parts = dict(p.strip().split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = sign(secret, ts, body).split("v1=", 1)[1]
    fresh = abs((time.time() if now is None else now) - ts) <= tolerance_s
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


def verify_secret_header(secret: str, header: str | None) -> bool:
    """Whether ``header`` (``X-Webhook-Secret``) is ``secret``, compared in constant time."""
    if not header or not secret:
        return False
    return hmac.compare_digest(header.encode(), secret.encode())


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether a delivery (its request ``headers`` and raw ``body``) carries ``secret``: by the
    HMAC signatures when the server sent any (``X-Fluxserve-Signature``, ``X-BFL-Signature``),
    else by ``X-Webhook-Secret`` (BFL). Header names match in any letter case.

    A signature that is present but wrong or stale fails, whatever the other headers say."""
    signature = _header(headers, SIGNATURE_HEADER)
    bfl_signature = _header(headers, BFL_SIGNATURE_HEADER)
    if signature is None and bfl_signature is None:
        return verify_secret_header(secret, _header(headers, SECRET_HEADER))
    if signature is not None and not verify_signature(secret, signature, body, tolerance_s):
        return False
    return bfl_signature is None or verify_bfl_signature(secret, bfl_signature, body)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` with the name matched case-insensitively (plain dicts are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None
