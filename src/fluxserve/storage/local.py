"""Files in a local directory (the default storage backend)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from fluxserve.storage.signing import SignedUrls


class LocalStorage:
    """Files under one directory; writes are atomic (temp file + rename). Downloads go through
    this server's ``/v1/files`` route, authorised by ``signer``."""

    def __init__(self, root: Path, signer: SignedUrls) -> None:
        self.root = root
        self.signer = signer
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if "\x00" in key:
            raise FileNotFoundError(key)
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise FileNotFoundError(f"storage key escapes the storage root: {key!r}")
        return p

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically."""
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    def get(self, key: str) -> bytes:
        """The file's bytes."""
        return self._path(key).read_bytes()

    def stream(self, key: str, chunk_size: int = 65536) -> Iterator[bytes]:
        """The file in chunks (opened now, so a missing file raises here)."""
        fh = self._path(key).open("rb")

        def chunks() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(chunk_size):
                    yield chunk

        return chunks()

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        try:
            return self._path(key).is_file()
        except (FileNotFoundError, OSError):
            return False

    def delete_prefix(self, prefix: str) -> None:
        """Delete a file or a whole folder."""
        p = self._path(prefix)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file():
            p.unlink(missing_ok=True)

    def url(self, key: str, ttl_s: int) -> str:
        """A root-relative URL of this server, signed for ``ttl_s`` seconds."""
        return self.signer.path(key, ttl_s)
