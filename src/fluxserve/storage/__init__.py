"""Result and input files: the ``Storage`` interface and its backends.

Backends: ``local`` (a directory), ``memory``, and ``s3`` (any S3-compatible store, selected by
``storage_url = "s3://bucket/prefix"``). A key is a relative path such as
``results/<job>/0.png``. ``url(key, ttl_s)`` is where a client downloads it: an absolute URL
from a backend that serves files itself (S3 presigned URLs), or a root-relative
``/v1/files/...`` URL signed by this server, which the protocol adapter prefixes with its base
URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from fluxserve.storage.local import LocalStorage
from fluxserve.storage.memory import MemoryStorage
from fluxserve.storage.s3 import S3Storage
from fluxserve.storage.signing import SignedUrls, load_or_create_secret

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class Storage(Protocol):
    """Where bytes live."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (atomically: readers see all of it or nothing)."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises ``FileNotFoundError`` when there are none."""
        ...

    def stream(self, key: str, chunk_size: int = 65536) -> Iterator[bytes]:
        """The bytes under ``key`` in chunks; raises ``FileNotFoundError`` when there are none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds bytes."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix`` (a job's folder)."""
        ...

    def url(self, key: str, ttl_s: int) -> str:
        """Where a client may download ``key`` for the next ``ttl_s`` seconds."""
        ...


__all__ = [
    "CONTENT_TYPES",
    "LocalStorage",
    "MemoryStorage",
    "S3Storage",
    "SignedUrls",
    "Storage",
    "load_or_create_secret",
]
