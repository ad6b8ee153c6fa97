"""Size-based routing between the SQL tier and the object store, and the
factory that opens an object store from a URL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import BlobNotFound, StorageError
from ._base import BlobInfo, BlobStore
from .fs import FsStore
from .memory import MemoryStore

__all__ = ["HybridStore", "open_object_store"]


class HybridStore(BlobStore):
    """Blobs smaller than ``db_size_limit`` go to ``sql``; the rest to ``objects``."""

    tier = "hybrid"

    def __init__(self, sql: BlobStore, objects: BlobStore, db_size_limit: int = 1 << 20) -> None:
        self.sql = sql
        self.objects = objects
        self.db_size_limit = db_size_limit

    def tier_for(self, size: int) -> str:
        """``"sql"`` for ``size < db_size_limit``, else ``"object"``."""
        return "sql" if size < self.db_size_limit else "object"

    def store_for(self, tier: str) -> BlobStore:
        if tier == "sql":
            return self.sql
        if tier == "object":
            return self.objects
        raise StorageError(f"unknown storage tier {tier!r}")

    def put(self, key: str, data: bytes) -> None:
        self.store_for(self.tier_for(len(data))).put(key, data)

    def put_routed(self, key: str, data: bytes) -> str:
        """Store ``data`` in the tier its size selects; return that tier."""
        tier = self.tier_for(len(data))
        self.store_for(tier).put(key, data)
        return tier

    def get(self, key: str) -> bytes:
        try:
            return self.sql.get(key)
        except BlobNotFound:
            return self.objects.get(key)

    def exists(self, key: str) -> bool:
        return self.sql.exists(key) or self.objects.exists(key)

    def delete(self, key: str) -> None:
        self.sql.delete(key)
        self.objects.delete(key)

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        yield from self.sql.scan(prefix)
        yield from self.objects.scan(prefix)

    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        return self.sql.sweep_incomplete(prefix, older_than) + \
            self.objects.sweep_incomplete(prefix, older_than)

    def delete_prefix(self, prefix: str) -> int:
        return self.sql.delete_prefix(prefix) + self.objects.delete_prefix(prefix)

    def close(self) -> None:
        self.sql.close()
        self.objects.close()


def open_object_store(blob_url: str, s3_endpoint_url: str | None = None) -> BlobStore:
    """Open the object store named by ``blob_url``.

    ``file:///abs/dir`` (or a plain path) → :class:`FsStore`;
    ``s3://bucket/prefix`` → :class:`S3Store` at ``s3_endpoint_url`` (AWS when
    None); ``memory://`` → :class:`MemoryStore`.
    """
    parsed = urlparse(blob_url)
    if parsed.scheme == "s3":
        from .s3 import S3Store  # boto3 only when S3 is used

        if not parsed.netloc:
            raise StorageError(f"blob URL {blob_url!r} names no bucket")
        return S3Store(parsed.netloc, unquote(parsed.path).strip("/"), endpoint_url=s3_endpoint_url)
    if parsed.scheme == "file":
        return FsStore(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "memory":
        return MemoryStore()
    if parsed.scheme == "":
        return FsStore(Path(blob_url))
    raise StorageError(f"unsupported blob URL {blob_url!r} (use file:///dir or s3://bucket/prefix)")
