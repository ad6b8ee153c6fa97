"""The job item store: a large job's items and results, outside Temporal payloads.

The client writes a job's encoded items once, in chunks of the job's batch
size, before it starts the job; each batch workflow reads its own chunk through
the ``read_job_items`` activity and writes its results with
``write_job_results``; the client reads the results back when the job is done.
Workflows never touch the store themselves (they do no I/O).

Layout, below the payload store (``<state dir>/payloads`` on the embedded
stack, ``s3://bucket/<prefix>/payloads/`` at scale)::

    jobs/<job id>/manifest          {"count": N, "chunk_size": S, "format": "payloads"}
    jobs/<job id>/items/<k>         chunk k: one serialized payload of its items
    jobs/<job id>/results/<k>       the results of chunk k, the same way

A chunk is one ``Payload``: a JSON list when all of its values are JSON, else a
payload list (``workflows.payloads``). Jobs written before that have no
``format`` and one base64 pickle per line (base64 has no newlines).
"""

from __future__ import annotations

import json
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.api.common.v1 import Payload

from sdk._files import write_atomic
from workflows.models import validate_job_id
from workflows.payloads import pack, unpack

if TYPE_CHECKING:
    from sdk._settings import ClientSettings

ITEMS = "items"
RESULTS = "results"
FORMAT_PAYLOADS = "payloads"


class JobItemsMissing(LookupError):
    """A chunk (or the manifest) of a job is not in the item store."""


class JobItemStore(ABC):
    """Whole objects by key below one root; keys are ``jobs/<job id>/...``."""

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes:
        """The object at ``key``; :class:`JobItemsMissing` if there is none."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix`` (a folder: ends in ``/``)."""

    @abstractmethod
    def job_ages(self) -> dict[str, float]:
        """Every job with something stored: seconds since its newest write, per job id."""

    def delete_job(self, job_id: str) -> None:
        """Remove everything stored for ``job_id`` (nothing if there is none)."""
        validate_job_id(job_id)
        self._delete_prefix(f"jobs/{job_id}/")

    def delete_items(self, job_id: str) -> None:
        """Remove the items of ``job_id`` but keep its manifest and results."""
        validate_job_id(job_id)
        self._delete_prefix(f"jobs/{job_id}/{ITEMS}/")

    def put_items(self, job_id: str, items: Sequence[Payload], chunk_size: int) -> int:
        """Store ``items`` in chunks of ``chunk_size``; return the number of chunks."""
        validate_job_id(job_id)
        chunks = 0
        for start in range(0, len(items), chunk_size):
            self.put_payload(job_id, ITEMS, chunks, pack(items[start : start + chunk_size]))
            chunks += 1
        # Written last: a job whose manifest exists has all of its chunks.
        manifest = {"count": len(items), "chunk_size": chunk_size, "format": FORMAT_PAYLOADS}
        self._put(f"jobs/{job_id}/manifest", json.dumps(manifest).encode())
        return chunks

    def manifest(self, job_id: str) -> dict[str, Any] | None:
        """``{"count", "chunk_size"[, "format"]}`` of a stored job, None if it has no items here."""
        validate_job_id(job_id)
        try:
            data = self._get(f"jobs/{job_id}/manifest")
        except JobItemsMissing:
            return None
        out: dict[str, Any] = json.loads(data)
        return out

    def put_payload(self, job_id: str, kind: str, chunk: int, payload: Payload) -> None:
        """Store one chunk as a payload (its values: ``unpack(payload)``)."""
        self._put(self._key(job_id, kind, chunk), payload.SerializeToString())

    def get_payload(self, job_id: str, kind: str, chunk: int) -> Payload:
        return Payload.FromString(self._get(self._key(job_id, kind, chunk)))

    def put_chunk(self, job_id: str, kind: str, chunk: int, lines: Sequence[str]) -> None:
        """Store one chunk of base64 lines (jobs of the first payload format)."""
        self._put(self._key(job_id, kind, chunk), "\n".join(lines).encode("ascii"))

    def get_chunk(self, job_id: str, kind: str, chunk: int) -> list[str]:
        data = self._get(self._key(job_id, kind, chunk)).decode("ascii")
        return data.split("\n") if data else []

    def read_results(self, job_id: str) -> list[Payload] | list[str] | None:
        """Every result of a stored job in input order; None if it has no items here.

        Payloads, or base64 strings for a job of the first payload format.
        """
        manifest = self.manifest(job_id)
        if manifest is None:
            return None
        count, size = manifest["count"], manifest["chunk_size"]
        out: list[Any] = []
        for chunk in range(-(-count // size)):
            out.extend(self.read_result_chunk(job_id, chunk, manifest))
        return out

    def read_result_chunk(self, job_id: str, chunk: int,
                          manifest: dict[str, Any] | None) -> list[Payload] | list[str]:
        """The results of chunk ``chunk`` of the job ``manifest`` describes
        (JobItemsMissing until its batch wrote them)."""
        if manifest is not None and manifest.get("format") == FORMAT_PAYLOADS:
            return unpack(self.get_payload(job_id, RESULTS, chunk))
        return self.get_chunk(job_id, RESULTS, chunk)

    @staticmethod
    def _key(job_id: str, kind: str, chunk: int) -> str:
        validate_job_id(job_id)
        if kind not in (ITEMS, RESULTS) or chunk < 0:
            raise ValueError(f"bad chunk {kind}/{chunk} of job {job_id}")
        return f"jobs/{job_id}/{kind}/{chunk}"


class FsJobItemStore(JobItemStore):
    """Files below one directory, written via temp + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _put(self, key: str, data: bytes) -> None:
        write_atomic(self.root / key, data)

    def _get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise JobItemsMissing(f"{key} is not in the job item store {self.root}") from None

    def _delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def job_ages(self) -> dict[str, float]:
        now, out = time.time(), {}
        jobs = self.root / "jobs"
        for job in (jobs.iterdir() if jobs.is_dir() else ()):
            try:
                newest = max((p.stat().st_mtime for p in job.rglob("*")),
                             default=job.stat().st_mtime)
            except FileNotFoundError:  # deleted while we looked
                continue
            out[job.name] = max(0.0, now - newest)
        return out


class S3JobItemStore(JobItemStore):
    """Objects below ``<prefix>payloads/`` of one bucket (boto3, imported here only)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        import boto3

        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url)
        self.bucket = bucket
        self.prefix = prefix

    def _put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def _get(self, key: str) -> bytes:
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._s3.exceptions.NoSuchKey:
            raise JobItemsMissing(f"s3://{self.bucket}/{self.prefix}{key} does not exist") from None
        data: bytes = resp["Body"].read()
        return data

    def _objects(self, prefix: str) -> Any:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def _delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": obj["Key"]} for obj in self._objects(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
            self._s3.delete_objects(Bucket=self.bucket,
                                    Delete={"Objects": keys[start : start + 1000]})

    def job_ages(self) -> dict[str, float]:
        now, newest = time.time(), dict[str, float]()
        base = len(self.prefix + "jobs/")
        for obj in self._objects("jobs/"):
            job_id = obj["Key"][base:].partition("/")[0]
            stamp = obj["LastModified"].timestamp()
            newest[job_id] = max(stamp, newest.get(job_id, stamp))
        return {job: max(0.0, now - t) for job, t in newest.items()}


def build_job_item_store(settings: ClientSettings) -> JobItemStore:
    """The store next to the payload store of ``settings`` (S3 for ``s3://`` blob URLs)."""
    blob_url = settings.blob_url or ""
    if blob_url.startswith("s3://"):
        bucket, _, prefix = blob_url[len("s3://") :].partition("/")
        prefix = f"{prefix.strip('/')}/payloads/" if prefix.strip("/") else "payloads/"
        return S3JobItemStore(bucket, prefix, settings.s3_endpoint_url)
    return FsJobItemStore(settings.payload_dir)
