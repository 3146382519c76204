"""API keys: made once, shown once, stored only as SHA-256 hashes (by any key store)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "fsk_"


@dataclass(frozen=True)
class ApiKey:
    """A key's record; the secret itself is never kept."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None


def new_key() -> tuple[str, str]:
    """A fresh ``(key id, secret)``: the id is the secret's first characters after the prefix."""
    while True:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
        if not key_id.startswith("-"):  # ids are command-line arguments (keys revoke ID)
            return key_id, secret


def hash_key(secret: str) -> str:
    """The stored form of a key (SHA-256, hex). Keys are long random strings, so a fast hash
    is enough: there is nothing to brute-force."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
