"""The blob store interface every storage adapter implements.

Call order, as the checkpoint manager uses it:

0. ``probe(under)`` once, when the store is opened: does the backend keep keys
   create-only (a no-op where the store itself enforces it)?
1. ``put(key, data)`` exactly once per key. Keys are create-only: a second put
   of the same key raises :class:`BlobExists` and leaves the first value intact.
   A put is atomic: a reader sees the whole blob or no blob. (A store whose
   client retries writes by itself, S3, takes a put that finds the very bytes
   it sends already stored as its own retried write: it succeeds.)
   ``put_pieces(key, pieces)`` is ``put`` of the pieces' concatenation (stores
   that can write the pieces one after the other override it to save a copy).
2. ``exists(key)`` to verify a write, then ``get(key)`` any number of times.
   ``get`` of a missing key raises :class:`BlobNotFound`.
3. ``delete(key)`` once the catalog no longer refers to the key; deleting a
   missing key is not an error.
4. ``scan(prefix)`` / ``list(prefix)`` at any time (cleanup and the orphan
   sweeper); they report only complete blobs.
5. ``sweep_incomplete(prefix, older_than)`` from the orphan sweeper: removes
   what interrupted puts left behind (unfinished multipart uploads, temp
   files) that no scan reports. ``delete_prefix(prefix)`` when a task or job is
   cleaned up: every blob under the prefix, incomplete writes included.

Keys are ``/``-separated relative paths whose components are non-empty and
never ``.`` or ``..``; adapters check this with :func:`check_key`. Backend
errors are translated into :mod:`checkpoint.errors` types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import InvalidId

__all__ = ["BlobInfo", "BlobStore", "check_key"]


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob as listed by :meth:`BlobStore.scan`."""

    key: str
    size: int
    modified_at: datetime  # timezone-aware UTC


def check_key(key: str) -> str:
    """Raise :class:`InvalidId` unless ``key`` is a safe relative key."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise InvalidId(f"invalid blob key {key!r}")
    if "\x00" in key or "\\" in key:
        raise InvalidId(f"blob key {key!r} contains a forbidden character")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidId(f"blob key {key!r} has an empty, '.' or '..' component")
    return key


class BlobStore(ABC):
    """Create-only key/value storage for checkpoint blobs (see module docstring)."""

    #: how the manifest names the tier this store backs ("sql" or "object")
    tier: str = "object"
    #: bytes/s one stream moves to or from the store, as the ``auto`` compression
    #: weighs it (None: unknown; then only the bytes a compression saves count)
    bandwidth: float | None = None
    #: parts of one link a restore fetches ahead of its decoder: enough to keep the
    #: cores busy while the store answers, few enough that a restore holds little
    #: besides the state (a store that answers at memory speed needs fewer)
    read_ahead: int = 4

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under a new ``key``; :class:`BlobExists` if taken."""

    def put_pieces(self, key: str, pieces: Sequence[Any]) -> None:
        """``put`` of the concatenation of ``pieces`` (buffers); the default joins them."""
        self.put(key, pieces[0] if len(pieces) == 1 and type(pieces[0]) is bytes else b"".join(pieces))

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the blob; :class:`BlobNotFound` if missing."""

    def get_buffer(self, key: str) -> bytes | np.ndarray:
        """The blob as a buffer; :class:`BlobNotFound` if missing.

        For a reader that copies the bytes out and then gives the buffer back
        (a restore decoding numeric parts: ``_memory.READS.give``): a store may
        read the blob into a reused buffer instead of a new ``bytes``
        (:class:`FsStore` does). The default is ``get``.
        """
        return self.get(key)

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a complete blob is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    @abstractmethod
    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Yield every complete blob whose key starts with ``prefix``."""

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``."""
        return sorted(info.key for info in self.scan(prefix))

    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        """Remove incomplete writes under ``prefix`` started before ``older_than``.

        An interrupted put can leave storage behind that is not a blob (an
        unfinished multipart upload, a temp file) and that ``scan`` never
        reports. Returns how many were removed; the default store has none.

        Args:
            prefix: key prefix (usually ending in ``/``) to look under.
            older_than: timezone-aware UTC cutoff; younger ones may be puts in
                flight right now and are kept.
        """
        return 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix``, incomplete writes included.

        Returns how many blobs and incomplete writes were removed. A put still
        running under the prefix fails or leaves a blob a later call removes.
        """
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys) + self.sweep_incomplete(prefix, datetime.max.replace(tzinfo=UTC))

    def describe(self, key: str) -> str:
        """Where ``key`` lives, for humans (a path or URL)."""
        return key

    def probe(self, under: str = "") -> bool:
        """Check, when the store is opened, that the backend keeps keys create-only.

        True when it does; raises :class:`StorageError` when it does not. The
        default holds by construction (the store itself refuses a second put);
        a store whose create-only rule is the service's (S3) tries it, writing
        under ``under`` only.
        """
        return True

    def close(self) -> None:
        """Release connections; the default has none."""
