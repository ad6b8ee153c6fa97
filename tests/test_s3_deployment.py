"""The S3 configuration end to end: a worker with ``CROWDCOMPUTE_BLOB_URL=s3://…``
against a moto server (real HTTP): large Temporal payloads and large checkpoint
blobs land under the blob prefix, and checkpoints are gone after the job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import boto3
import ckpt_tasks
import numpy as np
import pytest
from _servers import moto_server

import sdk
from worker_app.settings import Settings
from worker_app.worker import running_worker

BUCKET = "crowdcompute-test"


@pytest.fixture
def s3_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield settings.model_copy(update={"blob_url": f"s3://{BUCKET}/cc",
                                          "s3_endpoint_url": url})


def keys(settings: Settings, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_payloads_and_checkpoints_go_to_s3_and_checkpoints_are_cleaned(
        s3_settings: Settings) -> None:
    conn = await sdk.connect(settings=s3_settings)
    array = np.random.default_rng(3).standard_normal(655_360)  # 5 MiB item
    item = {"seed": 1, "interval": 0.5, "hold": 3.0, "array": array}
    async with running_worker(s3_settings, conn.client):
        job = await sdk.submit(ckpt_tasks.big_state_roundtrip, [item], checkpoint_interval=0.5,
                               job_id="s3-job")
        seen: list[str] = []
        for _ in range(60):
            # A task process opening its store writes and deletes a probe object
            # (`.probe/`) first; a listing in that moment must not end the wait.
            seen = [k for k in keys(s3_settings, "cc/ckpt/") if "/.probe/" not in k]
            if seen:
                break
            await asyncio.sleep(0.1)
        (got,) = await job.result()
    assert seen and all("/e1/s1/p" in k for k in seen)  # committed blob of seq 1, epoch 1
    assert got["captured"] is True
    assert got["item_sum"] == float(array.sum())
    assert got["echo"].tobytes() == array.tobytes()
    payloads = keys(s3_settings, "cc/payloads/")
    assert len(payloads) >= 2  # the item and the result were kept out of the history
    assert keys(s3_settings, "cc/ckpt/") == []
    assert [k for k in keys(s3_settings, "") if not k.startswith("cc/")] == []
