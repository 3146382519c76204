"""Files in memory: the storage backend for tests and throwaway servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from fluxserve.storage.signing import SignedUrls


class MemoryStorage:
    """Bytes in a dict; downloads go through this server's ``/v1/files`` route."""

    def __init__(self, signer: SignedUrls) -> None:
        self.signer = signer
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``."""
        with self._lock:
            self._files[key] = bytes(data)

    def get(self, key: str) -> bytes:
        """The bytes under ``key``."""
        with self._lock:
            if key not in self._files:
                raise FileNotFoundError(key)
            return self._files[key]

    def stream(self, key: str, chunk_size: int = 65536) -> Iterator[bytes]:
        """The bytes in chunks."""
        data = self.get(key)
        return iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""])

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds bytes."""
        with self._lock:
            return key in self._files

    def delete_prefix(self, prefix: str) -> None:
        """Delete ``prefix`` and every key under ``prefix/``."""
        with self._lock:
            for key in [k for k in self._files if k == prefix or k.startswith(prefix.rstrip("/") + "/")]:
                del self._files[key]

    def url(self, key: str, ttl_s: int) -> str:
        """A root-relative URL of this server, signed for ``ttl_s`` seconds."""
        return self.signer.path(key, ttl_s)
