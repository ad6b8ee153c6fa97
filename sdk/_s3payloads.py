"""S3 backend for Temporal external payloads: ``contrib.aws.s3driver`` over boto3."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from temporalio.contrib.aws.s3driver import S3StorageDriver, S3StorageDriverClient


class Boto3Client(S3StorageDriverClient):
    """``S3StorageDriverClient`` using a (thread-safe) boto3 client in a thread.

    Every key is written below ``key_prefix`` (``<blob prefix>/payloads/``), the
    part of the bucket the workers' IAM role may use.
    """

    def __init__(self, endpoint_url: str | None = None, key_prefix: str = "") -> None:
        import boto3

        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url)
        self._endpoint = endpoint_url
        self._prefix = key_prefix

    async def put_object(self, *, bucket: str, key: str, data: bytes) -> None:
        await asyncio.to_thread(
            self._s3.put_object, Bucket=bucket, Key=self._prefix + key, Body=data
        )

    async def object_exists(self, *, bucket: str, key: str) -> bool:
        def head() -> bool:
            try:
                self._s3.head_object(Bucket=bucket, Key=self._prefix + key)
            except self._s3.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return await asyncio.to_thread(head)

    async def get_object(self, *, bucket: str, key: str) -> bytes:
        resp = await asyncio.to_thread(
            self._s3.get_object, Bucket=bucket, Key=self._prefix + key
        )
        return await asyncio.to_thread(resp["Body"].read)

    def describe(self) -> Mapping[str, str]:
        return {"endpoint_url": self._endpoint or "default"}


def build_s3_driver(blob_url: str, endpoint_url: str | None) -> S3StorageDriver:
    """Payloads go to ``s3://bucket/<prefix>/payloads/…`` for ``blob_url`` ``s3://bucket/<prefix>``."""
    bucket, _, prefix = blob_url[len("s3://") :].partition("/")
    key_prefix = f"{prefix.strip('/')}/payloads/" if prefix.strip("/") else "payloads/"
    return S3StorageDriver(
        Boto3Client(endpoint_url, key_prefix), bucket=bucket, driver_name="crowdcompute.s3"
    )
