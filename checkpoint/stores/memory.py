"""In-process blob store for tests and single-process experiments."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from ..errors import BlobExists, BlobNotFound
from ._base import BlobInfo, BlobStore, check_key

__all__ = ["MemoryStore"]


class MemoryStore(BlobStore):
    """A dict of bytes guarded by a lock."""

    def __init__(self, tier: str = "object") -> None:
        self.tier = tier
        self._blobs: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        with self._lock:
            if key in self._blobs:
                raise BlobExists(f"CheckpointManager: blob {key!r} already exists")
            self._blobs[key] = (bytes(data), datetime.now(UTC))

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._blobs[key][0]
            except KeyError:
                raise BlobNotFound(f"blob {key!r} not found") from None

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._blobs

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._blobs.pop(key, None)

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._lock:
            items = [(k, v) for k, v in self._blobs.items() if k.startswith(prefix)]
        for key, (data, created) in items:
            yield BlobInfo(key, len(data), created)

    def describe(self, key: str) -> str:
        return f"memory://{key}"
