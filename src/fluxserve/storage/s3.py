"""Files in an S3-compatible object store, through boto3.

Endpoint, region and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles ...), read by
boto3 itself. Downloads go through this server's signed ``/v1/files`` URLs (the API node streams
the object), or, with ``presign``, straight from the store by its own presigned URLs with the
same expiry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from fluxserve.storage.signing import SignedUrls


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``("bucket", "prefix/")`` (the prefix may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"storage_url must look like s3://bucket/prefix, got {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Storage:
    """The ``Storage`` interface over one bucket and key prefix."""

    def __init__(self, url: str, signer: SignedUrls, presign: bool = False, client: Any = None) -> None:
        self.bucket, self.prefix = parse_storage_url(url)
        self.signer = signer
        self.presign = presign
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", config=Config(signature_version="s3v4"))
        self._s3 = client

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return str(code) in ("NoSuchKey", "404", "NotFound")

    def put(self, key: str, data: bytes) -> None:
        """Write the object (S3 puts are atomic)."""
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _open(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        body = self._open(key)
        with body:
            data: bytes = body.read()
        return data

    def stream(self, key: str, chunk_size: int = 65536) -> Iterator[bytes]:
        """The object in chunks (requested now, so a missing object raises here)."""
        body = self._open(key)

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(chunk_size)

        return chunks()

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Delete the object ``prefix`` and every object under ``prefix/``."""
        base = self._key(prefix.rstrip("/"))
        doomed: list[dict[str, str]] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                if obj["Key"] == base or obj["Key"].startswith(base + "/"):
                    doomed.append({"Key": obj["Key"]})
        for i in range(0, len(doomed), 1000):  # the API's batch limit
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": doomed[i : i + 1000]})

    def url(self, key: str, ttl_s: int) -> str:
        """The store's presigned URL (``presign``), else this server's signed URL."""
        if self.presign:
            url: str = self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=ttl_s
            )
            return url
        return self.signer.path(key, ttl_s)
