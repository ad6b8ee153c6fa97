"""A process killed at a named point of save, compaction, delete_task or the sweep.

Each case runs ``tests/_crash.py`` in a subprocess on a real catalog (a SQLite
file, or PostgreSQL) and a real object store (a directory, or S3 on a moto
server); a profile hook there calls ``os._exit(17)`` at the named point. The
test then opens the same catalog and store afresh and checks that

* every committed row names blobs that exist,
* restore returns exactly the last committed state (the child reported each
  state's digest before saving it; a crash after the commit landed counts the
  save in flight as committed),
* a new attempt resumes from that state and its next save works,
* ``delete_task`` plus ``sweep_orphans(grace 0)`` leave no row, no blob and no
  file (temporary ones included).

The chain of each run: seq 1 base, 2-4 deltas, 5 base (retires 1-4), 6-7 deltas
(``max_deltas_per_base=3``); the object tier holds the 1 MiB parts of the bases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from checkpoint._records import PartRef
from checkpoint.catalog import BlobRow, CheckpointRow
from tests._crash import CRASH_EXIT, JOB, TASK, open_manager, state_at, state_digest

ROOT = Path(__file__).resolve().parents[2]
SAVES7 = ["save"] * 7


@dataclass(frozen=True)
class Point:
    """Where the child dies: the ``nth`` ``event`` of ``target`` (inside ``within``)
    from action ``arm_at`` on; ``expect`` is what the catalog must then hold:
    ``committed`` (the last save that returned), ``inflight`` (the save in flight
    had committed) or ``none`` (the task's checkpoints were deleted)."""

    target: str
    event: str
    arm_at: int
    expect: str
    nth: int = 1
    within: str | None = None
    actions: list[str] = field(default_factory=lambda: list(SAVES7))
    prelude: Point | None = None  # a first child that must die too (leaves orphans)


# the child dies in the 5th save (a base) before its commit: its four blobs are orphans
ORPHANS = Point("ChainStore.commit", "call", 4, "committed", actions=["save"] * 5)

POINTS: dict[str, Point] = {
    "save: after part 2 of a base (object tier)": Point("FsStore.put_pieces", "return", 4, "committed",
                                                       nth=2),
    "save: first part of a base stored, the next ones encoding": Point(
        "FsStore.put_pieces", "return", 4, "committed"),
    "save: after the index part (SQL tier)": Point("SqlStore.put", "return", 1, "committed"),
    "save: a temp file written, not linked": Point("link", "c_call", 4, "committed",
                                                   within="FsStore._put_once"),
    "save: parts verified, before the commit": Point("ChainStore.commit", "call", 2, "committed"),
    "save: row flushed, transaction open": Point("commit_checkpoint", "return", 4, "committed"),
    "save: delta committed, before return": Point("ChainStore.commit", "return", 2, "inflight"),
    "compaction: base committed, before retirement": Point("ChainStore.retire_before", "call", 4,
                                                          "inflight"),
    "compaction: old rows deleted, no blob yet": Point("ChainStore.delete_refs", "call", 4,
                                                      "inflight", within="ChainStore.retire_before"),
    "compaction: between two blob deletes": Point("FsStore.delete", "call", 4, "inflight", nth=2,
                                                 within="ChainStore.retire_before"),
    "attempt: epoch taken, nothing read": Point("ChainStore.begin_attempt", "return", 3,
                                                "committed", actions=["save"] * 3 + ["reopen", "save"]),
    "delete_task: rows deleted, no blob yet": Point("ChainStore.delete_refs", "call", 6, "none",
                                                    within="ChainStore.delete_task_rows",
                                                    actions=["save"] * 6 + ["delete"]),
    "delete_task: between two blob deletes": Point("FsStore.delete", "call", 6, "none", nth=2,
                                                   within="CheckpointManager.delete_task",
                                                   actions=["save"] * 6 + ["delete"]),
    "delete_task: before the prefix scan": Point("ChainStore.delete_prefix", "call", 6, "none",
                                                 actions=["save"] * 6 + ["delete"]),
    "sweep: between two object deletes": Point("FsStore.delete", "call", 0, "committed", nth=2,
                                               within="sweep_orphans", actions=["sweep"],
                                               prelude=ORPHANS),
    "sweep: during the SQL tier": Point("SqlStore.delete_many", "call", 0, "committed",
                                        within="sweep_orphans", actions=["sweep"], prelude=ORPHANS),
}

PG_S3_POINTS: dict[str, Point] = {
    "save: after part 2 of a base (S3)": Point("S3Store.put", "return", 4, "committed", nth=2),
    "compaction: base committed, before retirement": POINTS[
        "compaction: base committed, before retirement"],
    "compaction: between two S3 deletes": Point("S3Store.delete", "call", 4, "inflight", nth=2,
                                               within="ChainStore.retire_before"),
    "delete_task: between two S3 deletes": Point("S3Store.delete", "call", 6, "none", nth=2,
                                                 within="CheckpointManager.delete_task",
                                                 actions=["save"] * 6 + ["delete"]),
}


def run_child(spec: dict[str, Any], point: Point) -> None:
    spec = {**spec, "target": point.target, "event": point.event, "nth": point.nth,
            "within": point.within, "arm_at": point.arm_at, "actions": point.actions}
    proc = subprocess.run([sys.executable, "-m", "tests._crash", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    # 17 only from the trap: a point never reached ends the child with 0 and fails here
    assert proc.returncode == CRASH_EXIT, proc.stderr[-3000:]


def expected_digest(report: Path, expect: str) -> str | None:
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    if expect == "none":
        assert lines[-1]["phase"] == "done"  # the child died inside delete_task
        return None
    begun = {x["step"]: x["digest"] for x in lines if x["phase"] == "begin"}
    done = [x["step"] for x in lines if x["phase"] == "done"]
    if expect == "inflight":
        (inflight,) = set(begun) - set(done)
        return begun[inflight]
    return begun[done[-1]] if done else None


def committed_blobs_exist(manager: Any) -> bool:
    with Session(manager.engine) as s:
        rows = list(s.scalars(select(CheckpointRow)))
    refs = [PartRef.from_json(p) for r in rows for p in r.parts]
    return all(manager.tiers.store_for(ref.tier).exists(ref.key) for ref in refs)


def leftovers(manager: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Rows, blob rows and object-store entries left (files of any name, S3 uploads)."""
    with Session(manager.engine) as s:
        out: dict[str, Any] = {
            "checkpoints": s.scalar(select(func.count()).select_from(CheckpointRow)),
            "blob_rows": s.scalar(select(func.count()).select_from(BlobRow))}
    if "s3" in spec:
        client, bucket = manager.tiers.objects.client, spec["s3"]["bucket"]
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        out["objects"] = sorted(o["Key"] for o in listed)
        out["uploads"] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    else:
        out["files"] = sorted(str(p) for p in Path(spec["blobs"]).rglob("*") if p.is_file())
    return out


def check_after_crash(spec: dict[str, Any], point: Point) -> None:
    if point.prelude is not None:
        run_child(spec, point.prelude)
    run_child({**spec, "first_step": _next_step(Path(spec["report"]))}, point)
    want = expected_digest(Path(spec["report"]), point.expect)
    manager = open_manager(spec)  # a fresh manager: nothing of the child survives
    try:
        assert committed_blobs_exist(manager) is True
        restored = manager.restore(JOB, TASK)
        assert (state_digest(restored.state) if restored else None) == want
        attempt = manager.open_attempt(JOB, TASK, 9)
        assert (state_digest(attempt.restored.state) if attempt.restored else None) == want
        following = state_at(20)
        attempt.writer.save(attempt.writer.capture(following), progress_percent=20.0)
        assert state_digest(manager.restore(JOB, TASK).state) == state_digest(following)
        manager.delete_task(TASK)
        manager.sweep_orphans(grace_seconds=0)
        nothing = {"checkpoints": 0, "blob_rows": 0}
        nothing.update({"objects": [], "uploads": []} if "s3" in spec else {"files": []})
        assert leftovers(manager, spec) == nothing
    finally:
        manager.close()


def _next_step(report: Path) -> int:
    if not report.exists():
        return 1
    return 1 + max((json.loads(x).get("step", 0) for x in report.read_text().splitlines()),
                   default=0)


# A crash between writing a temp file and linking it leaves ``.tmp-*``: the stores'
# ``sweep_incomplete`` / ``delete_prefix`` remove it (issue 12, item 2).
@pytest.mark.parametrize("name", list(POINTS))
def test_crash_point_sqlite_fs(name: str, tmp_path: Path, sqlite_url: str) -> None:
    spec = {"catalog": sqlite_url, "blobs": str(tmp_path / "blobs"),
            "report": str(tmp_path / "report.jsonl")}
    check_after_crash(spec, POINTS[name])


@pytest.mark.parametrize("name", list(PG_S3_POINTS))
def test_crash_point_postgres_s3(name: str, tmp_path: Path, pg_engine: Any, pg_url: str,
                                 s3_store: Any, moto_url: str) -> None:
    spec = {"catalog": pg_url, "report": str(tmp_path / "report.jsonl"),
            "s3": {"bucket": s3_store.bucket, "prefix": s3_store.prefix, "endpoint": moto_url}}
    check_after_crash(spec, PG_S3_POINTS[name])
