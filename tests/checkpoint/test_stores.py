"""One contract suite for every blob store, plus adapter-specific behaviour."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import STORE_KINDS, make_store
from crash_helpers import crash_mid_put

from checkpoint._ids import blob_key, encode_id, validate_id
from checkpoint.errors import (
    BlobExists,
    BlobNotFound,
    InvalidId,
    StorageError,
    StorageUnavailable,
)
from checkpoint.stores import BlobStore, FsStore, open_object_store
from checkpoint.stores.s3 import GET_ATTEMPTS, S3Store, s3_etag
from tests._fault_proxy import FaultProxy, FaultRules


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return make_store(request.param, request, tmp_path)


class TestBlobStoreContract:
    def test_put_get_exists(self, store: BlobStore) -> None:
        data = bytes(range(256)) * 3
        assert store.exists("a/b/c") is False
        store.put("a/b/c", data)
        assert store.exists("a/b/c") is True
        assert store.get("a/b/c") == data

    def test_empty_blob(self, store: BlobStore) -> None:
        store.put("k/empty", b"")
        assert store.get("k/empty") == b""
        assert store.exists("k/empty") is True

    def test_put_is_create_only(self, store: BlobStore) -> None:
        store.put("k/once", b"first")
        with pytest.raises(BlobExists):
            store.put("k/once", b"second")
        assert store.get("k/once") == b"first"

    def test_probe_confirms_create_only_writes_and_leaves_nothing(self, store: BlobStore) -> None:
        # Every store answers the probe CheckpointManager.from_urls makes when it opens one.
        assert store.probe("ckpt") is True
        assert store.list("") == []

    def test_put_pieces_stores_their_concatenation_create_only(self, store: BlobStore) -> None:
        body = np.arange(70_000, dtype=np.uint8)
        store.put_pieces("a/pieces", [b"head", body, memoryview(b"tail")])
        assert store.get("a/pieces") == b"head" + body.tobytes() + b"tail"
        with pytest.raises(BlobExists):
            store.put_pieces("a/pieces", [b"x", b"y"])
        assert store.get("a/pieces")[:4] == b"head"

    def test_get_missing_raises(self, store: BlobStore) -> None:
        with pytest.raises(BlobNotFound):
            store.get("no/such/key")

    def test_delete_and_delete_missing(self, store: BlobStore) -> None:
        store.put("d/x", b"1")
        store.delete("d/x")
        assert store.exists("d/x") is False
        store.delete("d/x")
        with pytest.raises(BlobNotFound):
            store.get("d/x")
        store.put("d/x", b"again")  # a deleted key may be written anew
        assert store.get("d/x") == b"again"

    def test_list_by_prefix(self, store: BlobStore) -> None:
        for key in ["p/a%2Fb/1", "p/a%2Fb/2", "p/aXb/1", "p/a_b/1", "q/1"]:
            store.put(key, key.encode())
        assert store.list("p/a%2Fb/") == ["p/a%2Fb/1", "p/a%2Fb/2"]
        assert store.list("p/a_b/") == ["p/a_b/1"]
        assert store.list("p/") == ["p/a%2Fb/1", "p/a%2Fb/2", "p/aXb/1", "p/a_b/1"]
        assert store.list("zzz/") == []

    def test_scan_reports_size_and_time(self, store: BlobStore) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        store.put("s/one", b"12345")
        [info] = list(store.scan("s/"))
        assert (info.key, info.size) == ("s/one", 5)
        assert before <= info.modified_at <= datetime.now(UTC) + timedelta(seconds=5)

    @pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a/\x00", "", "a/.."])
    def test_unsafe_keys_rejected(self, store: BlobStore, key: str) -> None:
        with pytest.raises(InvalidId):
            store.put(key, b"x")

    def test_large_blob_round_trip(self, store: BlobStore) -> None:
        data = (bytes(range(251)) * 40_000)[: 9 * (1 << 20) + 17]  # above the multipart size
        store.put("big/1", data)
        assert store.get("big/1") == data
        with pytest.raises(BlobExists):
            store.put("big/1", data[:100])
        assert store.get("big/1") == data

    def test_concurrent_create_only(self, store: BlobStore) -> None:
        outcomes: list[str] = []
        barrier = threading.Barrier(4)

        def attempt(i: int) -> None:
            barrier.wait()
            try:
                store.put("race/key", f"writer{i}".encode())
                outcomes.append("ok")
            except BlobExists:
                outcomes.append("exists")

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["exists", "exists", "exists", "ok"]
        assert store.get("race/key") in {f"writer{i}".encode() for i in range(4)}

    def test_delete_prefix_takes_everything_under_it_and_nothing_else(
            self, store: BlobStore) -> None:
        for key in ["p/a/e1/s1/p0", "p/a/e1/s2/p0", "p/a/e2/s1/p0", "p/A/e1/s1/p0", "p/ab/1",
                    "q/a/1"]:
            store.put(key, key.encode())
        assert store.delete_prefix("p/a/") == 3
        assert store.list("") == ["p/A/e1/s1/p0", "p/ab/1", "q/a/1"]  # case matters
        assert store.delete_prefix("p/a/") == 0
        assert store.delete_prefix("") == 3
        assert store.list("") == []

    def test_sweep_incomplete_keeps_complete_blobs(self, store: BlobStore) -> None:
        store.put("w/1", b"done")
        future = datetime.now(UTC) + timedelta(days=1)
        assert store.sweep_incomplete("w/", future) == 0
        assert store.get("w/1") == b"done"


# --- filesystem --------------------------------------------------------------------------

def test_fs_leaves_no_temp_files_and_prunes_dirs(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "root")
    store.put("j/t/e1/s1/p0", b"abc")
    assert [p.name for p in (tmp_path / "root/j/t/e1/s1").iterdir()] == ["p0"]
    store.delete("j/t/e1/s1/p0")
    assert list((tmp_path / "root").iterdir()) == []


def test_fs_hostile_ids_stay_inside_root(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "root")
    key = blob_key("ckpt", "../../etc", "..%2F..%2Fpasswd", 1, 1, 0)
    store.put(key, b"x")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1
    assert (tmp_path / "root") in files[0].parents
    assert store.get(key) == b"x"


def test_fs_crash_mid_put_leaves_a_temp_file_the_sweep_removes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FsStore(root)
    store.put("ckpt/j/t/e1/s1/p0", b"kept")
    crash_mid_put(root, "ckpt/j/t/e1/s2/p0")
    [tmp] = [p for p in root.rglob(".tmp-*")]
    assert tmp.stat().st_size == 4096  # what the write got to before the process died
    assert store.list("") == ["ckpt/j/t/e1/s1/p0"]  # a scan reports complete blobs only
    written = datetime.fromtimestamp(tmp.stat().st_mtime, UTC)
    assert store.sweep_incomplete("ckpt/", written - timedelta(seconds=1)) == 0  # in flight?
    assert store.sweep_incomplete("other/", datetime.now(UTC)) == 0
    assert store.sweep_incomplete("ckpt/", datetime.now(UTC)) == 1
    assert [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] == [
        "ckpt/j/t/e1/s1/p0"]
    assert not (root / "ckpt/j/t/e1/s2").exists()  # its directory went with it
    assert store.get("ckpt/j/t/e1/s1/p0") == b"kept"


def test_fs_delete_prefix_removes_temp_files_too(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FsStore(root)
    store.put("ckpt/j/t/e1/s1/p0", b"x")
    store.put("ckpt/j/u/e1/s1/p0", b"other task")
    crash_mid_put(root, "ckpt/j/t/e2/s3/p0")
    assert store.delete_prefix("ckpt/j/t/") == 2
    assert [p.relative_to(root).as_posix() for p in root.rglob("*")] == [
        "ckpt", "ckpt/j", "ckpt/j/u", "ckpt/j/u/e1", "ckpt/j/u/e1/s1", "ckpt/j/u/e1/s1/p0"]


# --- ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["..", "../x", "a/b", "%2F", "ü/ß", ".", "a\\b", " x "])
def test_encoded_ids_are_single_safe_components(value: str) -> None:
    enc = encode_id(value)
    assert "/" not in enc and "." not in enc and "\\" not in enc
    from urllib.parse import unquote
    assert unquote(enc) == value


@pytest.mark.parametrize("value", ["", "x" * 256, "a\x00b", None, 7])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(InvalidId):
        validate_id(value)


def test_longest_id_is_accepted() -> None:
    assert validate_id("x" * 255) == "x" * 255


def test_blob_key_layout() -> None:
    assert blob_key("ckpt", "job 1", "t/2", 3, 4, 5) == "ckpt/job%201/t%2F2/e3/s4/p5"


# --- S3 ---------------------------------------------------------------------------------------

def test_s3_probe_accepts_conditional_store(s3_store: S3Store) -> None:
    assert s3_store.probe() is True
    assert s3_store.list("") == []


def test_s3_probe_reports_store_ignoring_if_none_match(moto_url: str) -> None:
    store = S3Store("ckpt-bucket", "x", endpoint_url=moto_url, create_bucket=True)

    def strip(request, **_kw):  # a store that drops the header behaves like this
        request.headers.pop("If-None-Match", None)

    store.client.meta.events.register("before-send.s3.PutObject", strip)
    with pytest.raises(StorageError, match="ignores If-None-Match"):
        store.probe()


def test_s3_large_put_is_multipart(s3_store: S3Store) -> None:
    data = b"m" * (17 << 20)
    s3_store.put("mp/1", data)
    head = s3_store.client.head_object(Bucket="ckpt-bucket", Key="runs/a/mp/1")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ETag"].strip('"') == s3_etag(data)
    assert s3_store.get("mp/1") == data
    uploads = s3_store.client.list_multipart_uploads(Bucket="ckpt-bucket").get("Uploads", [])
    assert uploads == []


def test_s3_keys_live_under_prefix(s3_store: S3Store) -> None:
    s3_store.put("k/1", b"1")
    keys = [o["Key"] for o in s3_store.client.list_objects_v2(Bucket="ckpt-bucket")["Contents"]]
    assert keys == ["runs/a/k/1"]
    assert s3_store.describe("k/1") == "s3://ckpt-bucket/runs/a/k/1"


def test_moto_server_keeps_answering_a_long_session(moto_url: str) -> None:
    """The server logs a line per request; the fixture must never let that block it.

    (With its output on an unread pipe the server hung after ~850 requests.)
    """
    import urllib.request

    for _ in range(1500):
        with urllib.request.urlopen(f"{moto_url}/moto-api/data.json", timeout=10) as r:
            assert r.status == 200


# --- S3 behind the fault proxy -----------------------------------------------------------

@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as p:
        yield p


@pytest.fixture
def faulty(s3_store: S3Store, proxy: FaultProxy) -> S3Store:
    """The s3_store's bucket and prefix, reached through the proxy (no faults until a test sets
    ``proxy.policy``)."""
    return S3Store(s3_store.bucket, s3_store.prefix, endpoint_url=proxy.url)


def uploads(store: S3Store) -> list[str]:
    """Keys of the unfinished multipart uploads in the bucket (asked of moto directly)."""
    return [u["Key"] for u in
            store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])]


BIG = (bytes(range(251)) * 40_000)[: 9 * (1 << 20) + 5]  # two parts


def test_s3_put_whose_response_was_lost_is_recognised_as_ours(
        faulty: S3Store, proxy: FaultProxy, s3_store: S3Store) -> None:
    proxy.policy = FaultRules({"PutObject": ("drop", 1)})
    faulty.put("k/1", b"payload")  # botocore re-sends it and gets 412
    assert [(e.operation, e.fault, e.status) for e in proxy.events[:3]] == [
        ("PutObject", "drop", 200), ("PutObject", None, 412), ("HeadObject", None, 200)]
    assert faulty.counters["own_write"] == 1
    assert s3_store.get("k/1") == b"payload"


def test_s3_conflicting_object_still_raises_blob_exists(faulty: S3Store, s3_store: S3Store,
                                                       proxy: FaultProxy) -> None:
    s3_store.put("k/1", b"first")
    s3_store.put("k/big", BIG)
    proxy.policy = FaultRules({"PutObject": ("drop", 1)})
    with pytest.raises(BlobExists):
        faulty.put("k/1", b"other")  # same size and a lost response: still not ours
    with pytest.raises(BlobExists):
        faulty.put("k/big", BIG[:-1] + b"!")  # same size, same part count, other bytes
    assert (s3_store.get("k/1"), s3_store.get("k/big")) == (b"first", BIG)
    assert faulty.counters["own_write"] == 0
    faulty.put("k/1", b"first")  # the very bytes stored: a retry of our own write
    assert faulty.counters["own_write"] == 1


def test_s3_get_refetches_a_body_cut_off_mid_stream(faulty: S3Store, proxy: FaultProxy,
                                                    s3_store: S3Store) -> None:
    data = os.urandom(300_000)
    s3_store.put("g/1", data)
    proxy.policy = FaultRules({"GetObject": ("reset", 2)})
    assert faulty.get("g/1") == data
    assert [e.fault for e in proxy.events if e.operation == "GetObject"] == ["reset", "reset",
                                                                             None]
    assert faulty.counters["get_refetch"] == 2


def test_s3_get_gives_up_after_bounded_refetches(faulty: S3Store, proxy: FaultProxy,
                                                 s3_store: S3Store) -> None:
    s3_store.put("g/1", b"y" * 100_000)
    proxy.policy = FaultRules({"GetObject": ("reset", None)})
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cut off"):
        faulty.get("g/1")
    assert len([e for e in proxy.events if e.operation == "GetObject"]) == GET_ATTEMPTS
    assert (faulty.counters["get_refetch"], faulty.counters["get_gave_up"]) == (
        GET_ATTEMPTS - 1, 1)
    assert time.monotonic() - started < 5


def test_s3_failed_multipart_put_aborts_its_upload(faulty: S3Store, proxy: FaultProxy) -> None:
    proxy.policy = FaultRules({"UploadPart": ("denied", None)})
    with pytest.raises(StorageError):
        faulty.put("mp/1", BIG)
    assert uploads(faulty) == []
    assert faulty.counters["upload_aborted"] == 1
    assert faulty.list("") == []


def test_s3_upload_whose_abort_failed_is_left_to_the_sweep(
        faulty: S3Store, proxy: FaultProxy, s3_store: S3Store) -> None:
    proxy.policy = FaultRules({"UploadPart": ("denied", None),
                               "AbortMultipartUpload": ("denied", None)})
    with pytest.raises(StorageError):
        faulty.put("mp/1", BIG)
    assert faulty.counters["abort_failed"] == 1
    assert uploads(s3_store) == ["runs/a/mp/1"]
    assert s3_store.list("") == []  # nothing a scan sees: only the upload's parts
    assert s3_store.sweep_incomplete("other/", datetime.now(UTC)) == 0
    assert s3_store.sweep_incomplete("mp/", datetime.now(UTC)) == 1
    assert uploads(s3_store) == []


def test_s3_create_retried_after_a_lost_response_leaves_no_upload(
        faulty: S3Store, proxy: FaultProxy, s3_store: S3Store) -> None:
    proxy.policy = FaultRules({"CreateMultipartUpload": ("drop", 1)})
    faulty.put("mp/1", BIG)  # the first create made an upload whose id never came back
    creates = [e for e in proxy.events if e.operation == "CreateMultipartUpload"]
    assert [(e.fault, e.status) for e in creates] == [("drop", 200), (None, 200)]
    assert uploads(s3_store) == []
    assert faulty.counters["upload_aborted"] == 1
    assert s3_store.get("mp/1") == BIG


def test_s3_sweep_incomplete_honours_the_cutoff_and_prefix(s3_store: S3Store) -> None:
    client = s3_store.client
    for key in ["runs/a/ckpt/j/t/e1/s1/p1", "runs/a/other/x", "elsewhere/ckpt/y"]:
        client.create_multipart_upload(Bucket="ckpt-bucket", Key=key)
    # moto dates every upload 2010-11-10; a cutoff before that keeps them all
    assert s3_store.sweep_incomplete("ckpt/", datetime(2001, 1, 1, tzinfo=UTC)) == 0
    assert s3_store.sweep_incomplete("ckpt/", datetime.now(UTC)) == 1
    assert sorted(uploads(s3_store)) == ["elsewhere/ckpt/y", "runs/a/other/x"]
    assert s3_store.delete_prefix("") == 1  # the store's whole prefix, never outside it
    assert uploads(s3_store) == ["elsewhere/ckpt/y"]


def test_s3_probe_cleans_up_after_its_put_was_retried_into_412(
        faulty: S3Store, proxy: FaultProxy, s3_store: S3Store) -> None:
    proxy.policy = FaultRules({"PutObject": ("drop", 1)})
    assert faulty.probe("ckpt") is True
    puts = [e for e in proxy.events if e.operation == "PutObject"]
    assert [(e.fault, e.status) for e in puts] == [("drop", 200), (None, 412), (None, 412)]
    assert all(e.identity.split()[1].startswith("/ckpt-bucket/runs/a/ckpt/.probe/")
               for e in puts)
    assert s3_store.list("") == []


# --- URLs ---------------------------------------------------------------------------------------

def test_open_object_store_urls(tmp_path: Path, moto_url: str) -> None:
    fs = open_object_store(f"file://{tmp_path}/objs")
    assert isinstance(fs, FsStore) and fs.root == (tmp_path / "objs").resolve()
    s3 = open_object_store("s3://bkt/some/prefix", moto_url)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bkt", "some/prefix", moto_url)
    assert isinstance(open_object_store(str(tmp_path / "plain")), FsStore)
    with pytest.raises(StorageError):
        open_object_store("ftp://host/x")


def test_a_file_url_says_whether_large_blobs_bypass_the_page_cache(tmp_path: Path) -> None:
    assert isinstance(fs := open_object_store(f"file://{tmp_path}/a"), FsStore) and fs.direct
    assert isinstance(fs := open_object_store(f"file://{tmp_path}/a?direct=0"), FsStore) and not fs.direct
    assert isinstance(fs := open_object_store(f"file://{tmp_path}/a?direct=yes"), FsStore) and fs.direct
    for bad in ("?direct=maybe", "?cache=1", "?direct"):
        with pytest.raises(StorageError, match="unknown option"):
            open_object_store(f"file://{tmp_path}/a{bad}")
