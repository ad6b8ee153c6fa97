"""The data converter shared by clients and workers: our encodings, large payloads external.

Payloads of 256 KiB or more are stored through ``temporalio``'s
``ExternalStorage``: in a local directory on the embedded stack (shared by the
client and workers of one machine) or in S3 when ``blob_url`` is ``s3://``.
The history then holds only a small reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from sdk._files import write_atomic
from sdk._values import ValuePayloadConverter

if TYPE_CHECKING:
    from sdk._settings import ClientSettings

EXTERNAL_THRESHOLD = 256 * 1024


class LocalDirDriver(StorageDriver):
    """Content-addressed payload files in one directory (written atomically)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def name(self) -> str:
        return "crowdcompute.localdir"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        return await asyncio.to_thread(lambda: [self._put(p) for p in payloads])

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return await asyncio.to_thread(lambda: [self._get(c) for c in claims])

    def _put(self, payload: Payload) -> StorageDriverClaim:
        data = payload.SerializeToString()
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / digest
        if not path.exists():
            write_atomic(path, data)
        return StorageDriverClaim(claim_data={"sha256": digest})

    def _get(self, claim: StorageDriverClaim) -> Payload:
        digest = claim.claim_data["sha256"]
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"malformed payload claim {digest!r}")
        data = (self.root / digest[:2] / digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"external payload {digest} is corrupt")
        return Payload.FromString(data)


def build_storage_driver(settings: ClientSettings) -> StorageDriver:
    """The driver for ``settings``: S3 for ``s3://`` blob URLs, else a local dir."""
    blob_url = settings.blob_url or ""
    if blob_url.startswith("s3://"):
        from sdk._s3payloads import build_s3_driver

        return build_s3_driver(blob_url, settings.s3_endpoint_url)
    return LocalDirDriver(settings.payload_dir)


def build_data_converter(settings: ClientSettings) -> DataConverter:
    """The data converter every client and worker of a deployment must share.

    Temporal's default converters plus our item encodings (``sdk._values``); a
    client without it still reads and writes the JSON ones.
    """
    storage = ExternalStorage(
        drivers=[build_storage_driver(settings)], payload_size_threshold=EXTERNAL_THRESHOLD
    )
    return dataclasses.replace(DataConverter.default, external_storage=storage,
                               payload_converter_class=ValuePayloadConverter)
