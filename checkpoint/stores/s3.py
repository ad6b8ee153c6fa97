"""Blob store on S3 or an S3-compatible service (boto3 is imported only here).

Puts are create-only with ``If-None-Match: *``; blobs of 8 MiB and more go up
as multipart uploads whose parts are sent in parallel. :meth:`S3Store.probe`
checks at startup that the service really honours conditional writes.

Faults botocore's own retries do not cover are handled here:

- a put whose response was lost is retried by botocore into a 412 (or, for a
  multipart upload, into a completed upload): when the stored object's ETag
  and size are those of the bytes we sent, the write is ours and succeeded;
- a GET whose body is cut off is fetched again (the body is read after
  botocore's retry loop has returned);
- a failed multipart upload is aborted, and so is one whose create was
  retried (its first upload id never reached us); what cannot be aborted now
  is left to :meth:`S3Store.sweep_incomplete`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import BlobExists, BlobNotFound, CheckpointError, StorageError, StorageUnavailable
from ._base import BlobInfo, BlobStore, check_key

__all__ = ["GET_ATTEMPTS", "MULTIPART_THRESHOLD", "PART_SIZE", "S3Store", "s3_etag"]

log = logging.getLogger("checkpoint")

MULTIPART_THRESHOLD = 8 << 20
PART_SIZE = 8 << 20
#: how often a GET is sent when its body keeps being cut off
GET_ATTEMPTS = 4
_GET_BACKOFF = 0.05  # seconds before the first refetch, doubled each time
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def s3_etag(data: bytes | memoryview) -> str:
    """The ETag S3 gives ``data`` as :meth:`S3Store.put` uploads it (unquoted).

    A single PUT's ETag is the MD5 of the body; a multipart object's is the
    MD5 of its parts' MD5 digests followed by ``-<number of parts>``. (A
    bucket encrypted with SSE-KMS uses other ETags: then nothing matches and
    an ambiguous put is reported as :class:`BlobExists`, never wrongly as ours.)
    """
    view = memoryview(data)
    if len(view) < MULTIPART_THRESHOLD:
        return hashlib.md5(view, usedforsecurity=False).hexdigest()
    digests = b"".join(hashlib.md5(view[i:i + PART_SIZE], usedforsecurity=False).digest()
                       for i in range(0, len(view), PART_SIZE))
    count = -(-len(view) // PART_SIZE)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{count}"


class _UploadGone(StorageError):
    """CompleteMultipartUpload found no upload: a retry after our own completion, or an abort."""


class S3Store(BlobStore):
    """Blobs as objects ``{prefix}/{key}`` in ``bucket``.

    ``counters`` tallies how faults were ridden out (``own_write``,
    ``get_refetch``, ``get_gave_up``, ``upload_aborted``, ``abort_failed``,
    ``upload_swept``), for metrics and the fault tests.
    """

    tier = "object"
    bandwidth = 1e8   # one S3 stream

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
        self.counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        if create_bucket:
            self._call("creating bucket", self._create_bucket)

    def _count(self, event: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[event] += n

    def _create_bucket(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _full(self, key: str) -> str:
        check_key(key)
        return self._base() + key

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; translate its errors (the one choke point)."""
        try:
            return fn(*args, **kwargs)
        except CheckpointError:
            raise
        except ClientError as exc:
            code = _code(exc)
            if code in _EXISTS_CODES:
                raise BlobExists(f"CheckpointManager: {what}: object already exists") from exc
            if code in _MISSING_CODES:
                raise BlobNotFound(f"{what}: not found in s3://{self.bucket}") from exc
            if code in _BUSY_CODES:
                raise StorageUnavailable(f"CheckpointManager: {what}: {code}") from exc
            raise StorageError(f"CheckpointManager: {what}: {exc}") from exc
        except (BotoConnectionError, BotoCoreError) as exc:
            raise StorageUnavailable(f"CheckpointManager: {what}: {exc}") from exc

    # -- put ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        what = f"storing blob {key!r}"
        try:
            if len(data) < MULTIPART_THRESHOLD:
                self._call(what, self.client.put_object, Bucket=self.bucket, Key=full,
                           Body=bytes(data), IfNoneMatch="*")
            else:
                self._call(what, self._multipart, full, memoryview(data))
        except (BlobExists, _UploadGone):
            if not self._holds(full, data):
                raise
            # botocore re-sent a write whose response was lost; the object is that write
            self._count("own_write")
            log.info("CheckpointManager: %s: a retried put found the object it had written", what)

    def _holds(self, full: str, data: bytes) -> bool:
        """Whether the object at ``full`` is exactly ``data`` (size and ETag)."""
        try:
            head = self._call(f"checking object {full!r}", self.client.head_object,
                              Bucket=self.bucket, Key=full)
        except BlobNotFound:
            return False
        return (int(head.get("ContentLength", -1)) == len(data)
                and str(head.get("ETag", "")).strip('"') == s3_etag(data))

    def _multipart(self, full: str, data: memoryview) -> None:
        chunks = [data[i:i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]
        upload_id: str | None = None
        created: dict[str, Any] = {}

        def upload(n: int) -> dict[str, Any]:
            resp = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                           PartNumber=n + 1, Body=bytes(chunks[n]))
            return {"PartNumber": n + 1, "ETag": resp["ETag"]}

        try:
            created = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)
            upload_id = str(created["UploadId"])
            with ThreadPoolExecutor(min(self.max_workers, len(chunks))) as pool:
                parts = list(pool.map(upload, range(len(chunks))))
            self._complete(full, upload_id, parts)
        except BaseException:
            self._abort_uploads(full, upload_id)
            raise
        if created.get("ResponseMetadata", {}).get("RetryAttempts", 0):
            # the create was sent more than once: an earlier try may have made an
            # upload whose id never reached us
            self._abort_uploads(full, None)

    def _complete(self, full: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                raise _UploadGone(f"CheckpointManager: upload of {full!r} vanished") from exc
            raise

    def _abort_uploads(self, full: str, upload_id: str | None) -> None:
        """Best effort: abort ``upload_id`` and any other unfinished upload of ``full``.

        What fails is logged and left to :meth:`sweep_incomplete`.
        """
        ids = {upload_id} if upload_id else set()
        try:
            ids |= {u["UploadId"] for u in self._uploads(full) if u["Key"] == full}
        except StorageError as exc:
            log.warning("CheckpointManager: cannot list the uploads of %r: %s", full, exc)
        for uid in sorted(ids):
            try:
                self._abort(full, uid)
                self._count("upload_aborted")
            except StorageError as exc:
                self._count("abort_failed")
                log.warning("CheckpointManager: cannot abort upload %s of %r (the sweeper will):"
                            " %s", uid, full, exc)

    def _abort(self, full: str, upload_id: str) -> None:
        def abort() -> None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full,
                                                   UploadId=upload_id)
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # gone: a retried abort, or completed
                    raise

        self._call(f"aborting upload {upload_id} of {full!r}", abort)

    def _uploads(self, full_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=full_prefix)
        for page in self._call(f"listing uploads under {full_prefix!r}", list, pages):
            yield from page.get("Uploads", [])

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        full = self._full(key)
        what = f"reading blob {key!r}"
        attempt = 1
        while True:
            resp = self._call(what, self.client.get_object, Bucket=self.bucket, Key=full)
            try:
                return bytes(resp["Body"].read())
            except (BotoCoreError, OSError) as exc:
                # The body is read after botocore's retries returned: a reset or a
                # short read here is ours to retry.
                resp["Body"].close()
                if attempt >= GET_ATTEMPTS:
                    self._count("get_gave_up")
                    raise StorageUnavailable(f"CheckpointManager: {what}: body cut off "
                                             f"{attempt} times: {exc}") from exc
            self._count("get_refetch")
            time.sleep(_GET_BACKOFF * 2 ** (attempt - 1))
            attempt += 1

    def exists(self, key: str) -> bool:
        try:
            self._call(f"looking up blob {key!r}", self.client.head_object,
                       Bucket=self.bucket, Key=self._full(key))
        except BlobNotFound:
            return False
        return True

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        base = self._base()
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=base + prefix)
        for page in self._call(f"listing {prefix!r}", list, pages):
            for obj in page.get("Contents", []):
                yield BlobInfo(obj["Key"][len(base):], int(obj["Size"]), _utc(obj["LastModified"]))

    # -- deletion ------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        self._call(f"deleting blob {key!r}", self.client.delete_object,
                   Bucket=self.bucket, Key=self._full(key))

    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        """Abort the multipart uploads under ``prefix`` initiated before ``older_than``."""
        stale = [(u["Key"], u["UploadId"]) for u in self._uploads(self._base() + prefix)
                 if _utc(u["Initiated"]) <= older_than]
        for full, upload_id in stale:
            self._abort(full, upload_id)
        if stale:
            self._count("upload_swept", len(stale))
            log.info("CheckpointManager: aborted %d stale multipart uploads under %r",
                     len(stale), prefix)
        return len(stale)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the objects under ``prefix`` (in batches) and abort its uploads."""
        full_keys = [self._base() + info.key for info in self.scan(prefix)]
        for i in range(0, len(full_keys), _DELETE_BATCH):
            batch = full_keys[i:i + _DELETE_BATCH]
            resp = self._call(f"deleting {len(batch)} objects under {prefix!r}",
                              self.client.delete_objects, Bucket=self.bucket,
                              Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(f"CheckpointManager: deleting under {prefix!r}: "
                                   f"{len(resp['Errors'])} objects failed, e.g. "
                                   f"{first.get('Key')!r}: {first.get('Code')}")
        return len(full_keys) + self.sweep_incomplete(prefix, datetime.max.replace(tzinfo=UTC))

    # -- startup check -------------------------------------------------------------------

    def probe(self, under: str = "") -> bool:
        """Check that the service rejects a second create-only put of one key.

        The probe writes ``{under}/.probe/<random>`` inside the store's prefix
        and always deletes it again (pass the checkpoint key prefix as
        ``under`` so that the orphan sweeper reclaims a probe whose delete
        failed too).

        Returns True when the service honours ``If-None-Match: *``; raises
        :class:`StorageError` with a clear message when it does not (then a
        zombie attempt could overwrite a committed blob).
        """
        key = f"{under.strip('/')}/.probe/{uuid.uuid4().hex}".lstrip("/")
        try:
            self.put(key, b"1")
            try:
                self.put(key, b"2")
            except BlobExists:
                return True
            raise StorageError(
                f"CheckpointManager: s3://{self.bucket} at {self.endpoint_url or 'AWS'} ignores "
                "If-None-Match: * (conditional writes); create-only blob keys cannot be enforced")
        finally:
            self._delete_probe(key)

    def _delete_probe(self, key: str) -> None:
        try:
            self.delete(key)
        except StorageError as exc:
            log.warning("CheckpointManager: could not delete the probe object %s: %s",
                        self.describe(key), exc)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
