"""Signed, expiring file URLs: HMAC-SHA256 over a key and an expiry time."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode

Verdict = Literal["ok", "expired", "invalid"]
MAX_EXP_DIGITS = 12
"""An expiry is a unix time; anything longer is not one of ours."""


class SignedUrls:
    """Signs and checks ``/v1/files/<key>?exp=...&sig=...`` URLs."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _sig(self, key: str, exp: int) -> str:
        msg = f"{key}\n{exp}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def query(self, key: str, ttl_s: int | None = None, now: float | None = None) -> str:
        """The query string (``exp=...&sig=...``) that authorises a GET of ``key``."""
        exp = int((now if now is not None else time.time()) + (ttl_s if ttl_s is not None else self.ttl_s))
        return urlencode({"exp": exp, "sig": self._sig(key, exp)})

    def path(self, key: str, ttl_s: int | None = None) -> str:
        """The root-relative signed URL of ``key``."""
        return f"/v1/files/{quote(key)}?{self.query(key, ttl_s)}"

    def verify(self, key: str, exp: str | None, sig: str | None, now: float | None = None) -> Verdict:
        """``"ok"``, ``"expired"`` or ``"invalid"``; the signature is compared in constant time.

        Any string is safe to pass: non-ASCII or over-long values are simply invalid."""
        if not exp or not sig or len(exp) > MAX_EXP_DIGITS or not (exp.isascii() and exp.isdigit()):
            return "invalid"
        if not sig.isascii():
            return "invalid"
        if not hmac.compare_digest(self._sig(key, int(exp)).encode(), sig.encode()):
            return "invalid"
        if int(exp) < (now if now is not None else time.time()):
            return "expired"
        return "ok"


def load_or_create_secret(data_dir: Path, configured: str | None) -> bytes:
    """The URL-signing key: the configured one, else one generated once into the data dir."""
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
