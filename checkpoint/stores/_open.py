"""The factory that opens an object store from a URL.

(Routing between the SQL tier and the object store is ``checkpoint._chain.TierRouter``.)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse

from ..errors import StorageError
from ._base import BlobStore
from .fs import FsStore
from .memory import MemoryStore

__all__ = ["open_object_store"]


def open_object_store(blob_url: str, s3_endpoint_url: str | None = None) -> BlobStore:
    """Open the object store named by ``blob_url``.

    ``file:///abs/dir`` (or a plain path) → :class:`FsStore`; ``file:///abs/dir?direct=0``
    writes every blob through the page cache (by default large ones bypass it);
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
        return FsStore(Path(unquote(parsed.netloc + parsed.path)), direct=_direct(blob_url, parsed.query))
    if parsed.scheme == "memory":
        return MemoryStore()
    if parsed.scheme == "":
        return FsStore(Path(blob_url))
    raise StorageError(f"unsupported blob URL {blob_url!r} (use file:///dir or s3://bucket/prefix)")


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _direct(blob_url: str, query: str) -> bool:
    """The ``direct`` option of a ``file://`` URL (the only one it takes)."""
    direct = True
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "direct" or value.lower() not in _FLAGS:
            raise StorageError(f"blob URL {blob_url!r}: unknown option {key}={value!r} "
                               "(a file:// URL takes only direct=1 or direct=0)")
        direct = _FLAGS[value.lower()]
    return direct
