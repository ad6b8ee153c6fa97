"""Blob store adapters behind one interface (see :class:`BlobStore`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import BlobInfo, BlobStore, check_key
from ._open import open_object_store
from .fs import FsStore
from .memory import MemoryStore
from .sql import SqlStore

if TYPE_CHECKING:
    from .s3 import S3Store

__all__ = [
    "BlobInfo",
    "BlobStore",
    "FsStore",
    "MemoryStore",
    "S3Store",
    "SqlStore",
    "check_key",
    "open_object_store",
]


def __getattr__(name: str) -> Any:
    if name == "S3Store":  # keeps boto3 optional
        from .s3 import S3Store

        return S3Store
    raise AttributeError(name)
