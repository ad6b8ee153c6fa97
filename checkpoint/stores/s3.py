"""Blob store on S3 or an S3-compatible service (boto3 is imported only here).

Puts are create-only with ``If-None-Match: *``; blobs of 8 MiB and more go up
as multipart uploads whose parts are sent in parallel. :meth:`S3Store.probe`
checks at startup that the service really honours conditional writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import BlobExists, BlobNotFound, StorageError, StorageUnavailable
from ._base import BlobInfo, BlobStore, check_key

__all__ = ["MULTIPART_THRESHOLD", "S3Store"]

MULTIPART_THRESHOLD = 8 << 20
PART_SIZE = 8 << 20
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(BlobStore):
    """Blobs as objects ``{prefix}/{key}`` in ``bucket``."""

    tier = "object"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 client: Any = None, max_workers: int = 8, create_bucket: bool = False) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.max_workers = max_workers
        self.client = client or boto3.client(
            "s3", endpoint_url=endpoint_url,
            config=Config(max_pool_connections=max(10, max_workers * 2),
                          retries={"max_attempts": 5, "mode": "standard"}))
        if create_bucket:
            self._call("creating bucket", self._create_bucket)

    def _create_bucket(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BlobExists, BlobNotFound):
            raise
        except ClientError as exc:
            code = _code(exc)
            if code in _EXISTS_CODES:
                raise BlobExists(f"CheckpointManager: {what}: object already exists") from exc
            if code in _MISSING_CODES:
                raise BlobNotFound(f"{what}: not found in s3://{self.bucket}") from exc
            if code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StorageUnavailable(f"CheckpointManager: {what}: {code}") from exc
            raise StorageError(f"CheckpointManager: {what}: {exc}") from exc
        except (BotoConnectionError, BotoCoreError) as exc:
            raise StorageUnavailable(f"CheckpointManager: {what}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        what = f"storing blob {key!r}"
        if len(data) < MULTIPART_THRESHOLD:
            self._call(what, self.client.put_object, Bucket=self.bucket, Key=full,
                       Body=bytes(data), IfNoneMatch="*")
        else:
            self._call(what, self._multipart, full, memoryview(data))

    def _multipart(self, full: str, data: memoryview) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        chunks = [data[i:i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]

        def upload(n: int) -> dict[str, Any]:
            resp = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                           PartNumber=n + 1, Body=bytes(chunks[n]))
            return {"PartNumber": n + 1, "ETag": resp["ETag"]}

        try:
            with ThreadPoolExecutor(min(self.max_workers, len(chunks))) as pool:
                parts = list(pool.map(upload, range(len(chunks))))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                pass
            raise

    def get(self, key: str) -> bytes:
        full = self._full(key)
        resp = self._call(f"reading blob {key!r}", self.client.get_object,
                          Bucket=self.bucket, Key=full)
        return bytes(self._call(f"reading blob {key!r}", resp["Body"].read))

    def exists(self, key: str) -> bool:
        try:
            self._call(f"looking up blob {key!r}", self.client.head_object,
                       Bucket=self.bucket, Key=self._full(key))
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"deleting blob {key!r}", self.client.delete_object,
                   Bucket=self.bucket, Key=self._full(key))

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=base + prefix)
        for page in self._call(f"listing {prefix!r}", list, pages):
            for obj in page.get("Contents", []):
                when = obj["LastModified"]
                when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
                yield BlobInfo(obj["Key"][len(base):], int(obj["Size"]), when)

    def probe(self) -> bool:
        """Check that the service rejects a second create-only put of one key.

        Returns True when it does; raises :class:`StorageError` with a clear
        message when the service ignores ``If-None-Match: *`` (then a zombie
        attempt could overwrite a committed blob).
        """
        key = f".probe/{uuid.uuid4().hex}"
        self.put(key, b"1")
        try:
            try:
                self.put(key, b"2")
            except BlobExists:
                return True
            raise StorageError(
                f"CheckpointManager: s3://{self.bucket} at {self.endpoint_url or 'AWS'} ignores "
                "If-None-Match: * (conditional writes); create-only blob keys cannot be enforced")
        finally:
            self.delete(key)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
