"""Result and input files: a small storage interface, a local-directory backend, signed URLs."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class Storage(Protocol):
    """Where bytes live. Keys are relative paths such as ``results/<job>/0.png``."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...


class LocalStorage:
    """Files under one directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return p

    def put(self, key: str, data: bytes) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        p = self.path(prefix)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file():
            p.unlink(missing_ok=True)


class SignedUrls:
    """HMAC-SHA256 signatures over a file key and an expiry time."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _sig(self, key: str, exp: int) -> str:
        msg = f"{key}\n{exp}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def query(self, key: str, now: float | None = None) -> str:
        """The query string (``exp=...&sig=...``) that authorises a GET of ``key``."""
        exp = int((now if now is not None else time.time()) + self.ttl_s)
        return urlencode({"exp": exp, "sig": self._sig(key, exp)})

    def verify(self, key: str, exp: str | None, sig: str | None, now: float | None = None) -> str:
        """``"ok"``, ``"expired"`` or ``"invalid"``; the signature is compared in constant time."""
        if not exp or not sig or not exp.isdigit():
            return "invalid"
        if not hmac.compare_digest(self._sig(key, int(exp)), sig):
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
