"""Checkpoints through a faulty S3: the seeded fault proxy in front of moto.

At least 200 saves of a changing state go through the real checkpoint manager
into S3 behind :class:`FaultProxy` (500, 503, resets mid-response, responses
lost after the upstream acted, slow responses), with a restore every few saves
and a new attempt now and then. Asserted throughout: no committed catalog row
names a missing or partial blob; every restore is exact or a clean
CheckpointError; after ``delete_task`` and a sweep nothing is left under the
prefix, neither objects nor multipart uploads.

``CROWDCOMPUTE_FAULT_SEED`` picks another seed; ``CROWDCOMPUTE_FAULT_REPORT=path``
writes what was injected and how it ended as JSON (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager, ManagerConfig
from checkpoint._records import PartRef
from checkpoint.catalog import BlobRow, CheckpointRow
from checkpoint.errors import CheckpointError
from checkpoint.stores import SqlStore
from checkpoint.stores.s3 import S3Store
from tests._fault_proxy import Event, FaultProxy, Request, SeededFaults, fault_endings
from tests._servers import reset_moto

SEED = int(os.environ.get("CROWDCOMPUTE_FAULT_SEED", "20261201"))
SAVES = 200
# 503 (botocore backs off up to 1 s after a throttle) and slow responses cost
# waiting, not coverage: they get half the rate
RATES = {"error500": 0.015, "error503": 0.0075, "reset": 0.015, "drop": 0.015, "slow": 0.0075}
# aimed at the writes and reads whose faults used to leak or fail (issue 12)
WEIGHTS = {"PutObject": 2.0, "CreateMultipartUpload": 4.0, "UploadPart": 2.0,
           "CompleteMultipartUpload": 4.0, "GetObject": 6.0, "HeadObject": 0.5,
           "DeleteObject": 0.5}
BUCKET, PREFIX = "ckpt-bucket", "runs/faults"
JOB, TASK = "fault-job", "fault-task"
# 9 MiB of float32, stored uncompressed: a base part is a multipart upload of two parts
ROWS, COLS = 2304, 1024

T = TypeVar("T")


class Tally:
    """How the operations of the run ended, by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def attempt(self, what: str, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run ``fn``; a CheckpointError is a clean failure (counted, ``(False, None)``)."""
        try:
            result = fn()
        except CheckpointError as exc:
            self.counts[f"{what} failed: {type(exc).__name__}"] += 1
            return False, None
        self.counts[f"{what} ok"] += 1
        return True, result

    def until_ok(self, what: str, fn: Callable[[], T], tries: int = 10) -> T:
        """Retry ``fn`` as the orchestrator retries an activity."""
        for _ in range(tries):
            ok, result = self.attempt(what, fn)
            if ok:
                return result  # type: ignore[return-value]
        raise AssertionError(f"{what} failed {tries} times: {self.counts}")


def initial_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"big": rng.standard_normal((ROWS, COLS), dtype=np.float32),
            "emb": rng.standard_normal((512, 256), dtype=np.float32),
            "step": 0, "history": []}


def advance(state: dict[str, Any], step: int, rng: np.random.Generator) -> None:
    """Mostly a few rows change (a small delta); now and then all of it (a big one)."""
    big = state["big"]
    if step % 37 == 0:
        big += rng.standard_normal(big.shape, dtype=np.float32)
    else:
        rows = rng.choice(ROWS, size=int(rng.integers(1, 9)), replace=False)
        big[rows] = rng.standard_normal((len(rows), COLS), dtype=np.float32)
    if step % 7 == 0:
        state["emb"] *= np.float32(0.5)
    state["step"] = step
    state["history"].append(step)


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {"big": np.array(state["big"], copy=True), "emb": np.array(state["emb"], copy=True),
            "step": state["step"], "history": list(state["history"])}


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["step"] == b["step"] and a["history"] == b["history"]
            and np.array_equal(a["big"], b["big"]) and np.array_equal(a["emb"], b["emb"]))


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    reset_moto(moto_url)
    with FaultProxy(moto_url, slow_seconds=0.2) as p:
        yield p


def committed_parts(manager: CheckpointManager) -> list[PartRef]:
    with Session(manager.engine) as s:
        rows = s.scalars(select(CheckpointRow).where(CheckpointRow.task_id == TASK))
        return [PartRef.from_json(p) for r in rows for p in r.parts]


def stored_objects(direct: Any) -> dict[str, int]:
    """Key -> size of every object under the prefix, asked of moto directly."""
    out: dict[str, int] = {}
    for page in direct.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                 Prefix=f"{PREFIX}/"):
        out.update({o["Key"][len(PREFIX) + 1:]: int(o["Size"]) for o in page.get("Contents", [])})
    return out


def open_uploads(direct: Any) -> list[str]:
    listing = direct.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return [u["Key"] for u in listing.get("Uploads", [])]


def sql_blobs(manager: CheckpointManager) -> dict[str, int]:
    with Session(manager.engine) as s:
        return dict(s.execute(select(BlobRow.key, BlobRow.size)).all())  # type: ignore[arg-type]


def check_rows_name_complete_blobs(manager: CheckpointManager, direct: Any) -> int:
    """Every part of every committed row is stored whole; return how many parts."""
    parts = committed_parts(manager)
    objects, sql = stored_objects(direct), sql_blobs(manager)
    for ref in parts:
        stored = (objects if ref.tier == "object" else sql).get(ref.key)
        assert (ref.key, stored) == (ref.key, ref.size)
    return len(parts)


def ambiguous_writes(proxy: FaultProxy) -> int:
    """Requests that, retried after a fault, found the object already there (412)."""
    faulted: set[str] = set()
    count = 0
    for e in proxy.events:
        if e.fault is not None and e.fault != "slow":
            faulted.add(e.identity)
        elif e.identity in faulted:
            faulted.discard(e.identity)
            count += e.status == 412
    return count


def test_checkpoints_survive_s3_faults(moto_url: str, pg_engine, proxy: FaultProxy) -> None:
    started = time.monotonic()
    direct = boto3.client("s3", endpoint_url=moto_url)
    store = S3Store(BUCKET, PREFIX, endpoint_url=proxy.url, create_bucket=True)
    manager = CheckpointManager(pg_engine, SqlStore(pg_engine), store,
                                ManagerConfig(db_size_limit=1024, max_deltas_per_base=16,
                                              compression="none", encode_threads=2))
    proxy.policy = SeededFaults(SEED, RATES, WEIGHTS)
    tally = Tally()
    rng = np.random.default_rng(SEED)
    state = initial_state(rng)
    committed: dict[str, Any] | None = None
    attempt = 1

    def open_attempt() -> tuple[Any, Any]:
        """Take an epoch and restore, as a new attempt of the task does; check the restore."""
        nonlocal attempt

        def begin() -> Any:
            nonlocal attempt
            opened = manager.open_attempt(JOB, TASK, attempt)
            attempt += 1
            return opened

        opened = tally.until_ok("attempt restore", begin)
        check_restore(opened.restored)
        return opened.writer, opened.restored

    def check_restore(restored: Any) -> None:
        if committed is None:
            assert restored is None
            return
        assert restored is not None and restored.truncated is False
        assert restored.state["step"] == committed["step"]
        assert same_state(restored.state, committed)

    writer, _ = open_attempt()
    max_parts = 0
    for step in range(1, SAVES + 1):
        advance(state, step, rng)
        saved, _info = tally.attempt("save", lambda w=writer, s=state: w.save(w.capture(s)))
        if saved:
            committed = copy_state(state)
        max_parts = max(max_parts, check_rows_name_complete_blobs(manager, direct))
        if step % 40 == 0:  # the worker died: a new attempt resumes from the catalog
            writer, restored = open_attempt()
            state = copy_state(restored.state)
        elif step % 20 == 0:
            ok, restored = tally.attempt("restore", lambda: manager.restore(JOB, TASK))
            if ok:
                check_restore(restored)
        if step % 50 == 0:
            tally.until_ok("sweep", lambda: manager.sweep_orphans(grace_seconds=0))
            referenced = {r.key for r in committed_parts(manager)}
            with proxy.paused():
                assert set(stored_objects(direct)) <= referenced
                assert open_uploads(direct) == []

    tally.until_ok("delete_task", lambda: manager.delete_task(TASK))
    tally.until_ok("final sweep", lambda: manager.sweep_orphans(grace_seconds=0))
    with proxy.paused():
        assert stored_objects(direct) == {}
        assert open_uploads(direct) == []
        assert sql_blobs(manager) == {}
        assert committed_parts(manager) == []

    injected = proxy.injected()
    endings = fault_endings(proxy.events)
    report = {
        "seed": SEED, "saves": SAVES, "requests": len(proxy.events),
        "seconds": round(time.monotonic() - started, 1),
        "injected": dict(injected),
        "endings": {kind: dict(c) for kind, c in endings.items()},
        "endings_by_operation": {name: dict(c) for name, c in
                                 fault_endings(proxy.events, by_operation=True).items()},
        "store": dict(store.counters), "operations": dict(tally.counts),
        "requests_by_operation": dict(Counter(e.operation for e in proxy.events)),
        "faults_by_operation": dict(Counter(f"{e.operation} {e.fault}" for e in proxy.events
                                            if e.fault is not None)),
        "most_parts_committed": max_parts,
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    if path := os.environ.get("CROWDCOMPUTE_FAULT_REPORT"):
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)

    # the run exercised what it claims to, and retries absorbed nearly every fault
    assert tally.counts["save ok"] >= SAVES - 5
    assert all(injected[kind] >= 3 for kind in RATES), injected
    assert sum(1 for e in proxy.events if e.operation == "UploadPart") >= 20
    # a retried write that found its own object is a success, never BlobExists
    assert tally.counts["save failed: BlobExists"] == 0
    assert store.counters["own_write"] == ambiguous_writes(proxy)
    # every GET cut off mid-body was fetched again by the store (or, cut off
    # GET_ATTEMPTS times in a row, failed as StorageUnavailable)
    cut_gets = sum(1 for e in proxy.events if e.operation == "GetObject" and e.fault == "reset")
    assert store.counters["get_refetch"] + store.counters["get_gave_up"] == cut_gets
    assert store.counters["get_gave_up"] <= tally.counts["restore failed: StorageUnavailable"] + \
        tally.counts["attempt restore failed: StorageUnavailable"]


def test_seeded_faults_are_reproducible_and_weighted() -> None:
    def put(n: int) -> Request:
        return Request("PUT", f"/b/k{n}", (), b"")

    def get(n: int) -> Request:
        return Request("GET", f"/b/k{n}", (), b"")

    policy = SeededFaults(7, {"error500": 0.1, "drop": 0.1}, {"GetObject": 0.0})
    draws = [policy(put(n), seen) for n in range(2000) for seen in range(2)]
    assert draws == [SeededFaults(7, {"error500": 0.1, "drop": 0.1})(put(n), seen)
                     for n in range(2000) for seen in range(2)]
    assert 300 < draws.count("error500") < 500 and 300 < draws.count("drop") < 500
    assert {policy(get(n), 0) for n in range(2000)} == {None}
    assert draws != [SeededFaults(8, {"error500": 0.1, "drop": 0.1})(put(n), seen)
                     for n in range(2000) for seen in range(2)]


def test_fault_endings_follow_the_retries_of_each_request() -> None:
    events = [Event(0, "PutObject", "PUT /b/k", "drop", 200),
              Event(1, "HeadObject", "HEAD /b/j", "error503", None),
              Event(2, "PutObject", "PUT /b/k", "reset", 412),
              Event(3, "PutObject", "PUT /b/k", None, 412),
              Event(4, "HeadObject", "HEAD /b/j", "slow", 200),
              Event(5, "GetObject", "GET /b/k", "error500", None)]
    endings = fault_endings(events)
    assert {k: dict(v) for k, v in endings.items()} == {
        "drop": {"retried into 412": 1}, "reset": {"retried into 412": 1},
        "error503": {"retried ok": 1}, "slow": {"delivered late": 1},
        "error500": {"no try got through": 1}}
