"""The factory that opens an object store from a URL.

(Routing between the SQL tier and the object store is ``checkpoint._chain.TierRouter``.)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import StorageError
from ._base import BlobStore
from .fs import FsStore
from .memory import MemoryStore

__all__ = ["open_object_store"]


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
