"""The monitoring endpoints against a real job: a workflow on the session's
Temporal dev server, checkpoints committed by the real CheckpointManager into a
SQLite catalog and a local blob directory. Values are checked against the
catalog rows and the blob files themselves."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session
from temporalio.client import Client

from checkpoint import CheckpointManager
from checkpoint.catalog import chain_rows, job_tasks
from worker_app.settings import Settings

from ._probe import ProbeWorkflow
from .conftest import API_TOKEN, ProbeJob, write_checkpoints

BASE = "/api/checkpoints"


def parse_ts(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    assert ts.tzinfo is not None
    return ts


async def test_job_view_matches_catalog(
    http: httpx.AsyncClient, manager: CheckpointManager, probe_job: ProbeJob
) -> None:
    job = probe_job.job_id
    write_checkpoints(manager, job, 0, [10.0, 20.0, 30.0])
    write_checkpoints(manager, job, 1, [50.0])

    r = await http.get(f"{BASE}/jobs/{job}")
    assert r.status_code == 200
    body = r.json()
    assert body["job_id"] == job
    assert body["job_status"] == "running"
    assert body["total_tasks"] == 3  # from the workflow's progress query
    assert body["tasks_with_checkpoints"] == 2
    assert body["total_checkpoints_taken"] == 4
    assert body["average_progress_percent"] == pytest.approx((30.0 + 50.0) / 3, abs=1e-3)

    with Session(manager.engine) as s:
        rows = {t.task_id: t for t in job_tasks(s, job)}
        chains = {t: chain_rows(s, t) for t in rows}
    assert [t["task_id"] for t in body["tasks"]] == [f"{job}:0", f"{job}:1"]
    assert body["total_bytes_stored"] == sum(r.stored_bytes for c in chains.values() for r in c)
    for task in body["tasks"]:
        row = rows[task["task_id"]]
        assert isinstance(task["progress_percent"], float)
        assert task["progress_percent"] == row.progress_percent
        assert isinstance(task["checkpoint_count"], int)
        assert task["checkpoint_count"] == row.checkpoint_count
        assert parse_ts(task["last_checkpoint_at"]) == row.last_checkpoint_at
        assert isinstance(task["base_checkpoint_size"], int)
        assert task["base_checkpoint_size"] == row.base_checkpoint_size
        assert task["base_checkpoint_size"] > 0
        assert task["attempt"] == 1
        assert task["epoch"] == row.epoch
        assert task["bytes_stored"] == sum(r.stored_bytes for r in chains[task["task_id"]])


async def test_task_detail_matches_catalog(
    http: httpx.AsyncClient, manager: CheckpointManager, probe_job: ProbeJob
) -> None:
    job, task = probe_job.job_id, f"{probe_job.job_id}:0"
    commits = write_checkpoints(manager, job, 0, [5.0, 15.0, 25.0])
    r = await http.get(f"{BASE}/tasks/{task}")
    assert r.status_code == 200
    d = r.json()
    assert d["task_id"] == task
    assert d["job_id"] == job
    assert d["head_seq"] == commits[-1].seq
    assert d["checkpoint_count"] == 3
    assert d["progress_percent"] == 25.0
    assert d["attempt"] == 1 and d["epoch"] == commits[-1].epoch
    assert d["status"] == "running"
    assert d["force_pending"] is False
    assert 0 <= d["age_seconds"] < 60
    assert parse_ts(d["last_checkpoint_at"]) == commits[-1].created_at

    with Session(manager.engine) as s:
        rows = chain_rows(s, task)  # what compaction left: the live chain
    assert rows and rows[-1].seq == commits[-1].seq
    assert [c["seq"] for c in d["chain"]] == [r.seq for r in rows]
    assert d["chain"][0]["kind"] == "base"
    assert d["base_checkpoint_size"] == rows[0].stored_bytes
    assert d["bytes_stored"] == sum(r.stored_bytes for r in rows)
    by_seq = {c.seq: c for c in commits}
    for link, row in zip(d["chain"], rows, strict=True):
        commit = by_seq[row.seq]
        assert link["kind"] == row.kind == commit.kind
        assert link["base_seq"] == row.base_seq
        assert link["stored_size"] == row.stored_bytes == commit.stored_bytes
        assert link["raw_size"] == row.raw_bytes == commit.raw_bytes
        assert link["codecs"] == sorted({p.codec for p in commit.parts})
        assert link["parts"] == len(commit.parts)
        assert link["progress_percent"] == commit.progress_percent
        assert parse_ts(link["created_at"]) == commit.created_at


async def test_storage_info_points_at_real_blobs(
    http: httpx.AsyncClient, manager: CheckpointManager, probe_job: ProbeJob, store_root: Path
) -> None:
    job = probe_job.job_id
    commits = write_checkpoints(manager, job, 2, [40.0, 60.0])
    r = await http.get(f"{BASE}/storage-info/{job}:2")
    assert r.status_code == 200
    info = r.json()
    refs = [(c.seq, p) for c in commits for p in c.parts]
    assert len(info["blobs"]) == len(refs)
    tiers = set()
    for blob, (seq, ref) in zip(info["blobs"], refs, strict=True):
        assert blob["seq"] == seq
        assert blob["key"] == ref.key
        assert blob["stored_size"] == ref.size
        assert blob["raw_size"] == ref.raw_size
        assert blob["sha256"] == ref.sha256
        tiers.add(blob["tier"])
        if blob["tier"] == "object":
            path = Path(blob["location"])
            assert path.is_file()
            assert path.resolve().is_relative_to(store_root.resolve())
            assert path.stat().st_size == ref.size
            assert ref.size >= 4096
        else:
            assert ref.size < 4096
    assert tiers == {"sql", "object"}
    totals = info["totals"]
    assert totals["blob_count"] == len(refs)
    assert totals["stored_bytes"] == sum(p.size for _, p in refs)
    assert totals["raw_bytes"] == sum(p.raw_size for _, p in refs)
    assert totals["sql_bytes"] + totals["object_bytes"] == totals["stored_bytes"]
    assert totals["sql_bytes"] == sum(p.size for _, p in refs if p.tier == "sql")
    assert info["db_size_limit"] == 4096


async def test_job_known_to_temporal_only(http: httpx.AsyncClient, probe_job: ProbeJob) -> None:
    r = await http.get(f"{BASE}/jobs/{probe_job.job_id}")
    assert r.status_code == 200
    body = r.json()
    assert (body["job_status"], body["total_tasks"], body["tasks"]) == ("running", 3, [])
    assert body["tasks_with_checkpoints"] == 0 and body["average_progress_percent"] == 0.0


async def test_job_known_to_catalog_only(
    http: httpx.AsyncClient, manager: CheckpointManager
) -> None:
    job = f"gone-{uuid.uuid4().hex[:8]}"
    write_checkpoints(manager, job, 0, [70.0])
    body = (await http.get(f"{BASE}/jobs/{job}")).json()
    assert body["job_status"] == "unknown"
    assert body["total_tasks"] == 1 and body["average_progress_percent"] == 70.0


async def _wait_status(http: httpx.AsyncClient, job: str, want: str) -> dict:
    for _ in range(100):
        body = (await http.get(f"{BASE}/jobs/{job}")).json()
        if body["job_status"] == want:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job} never reached {want}; last {body['job_status']}")


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled", "terminated"])
async def test_job_status_follows_the_workflow(
    http: httpx.AsyncClient, manager: CheckpointManager, probe_job: ProbeJob, outcome: str
) -> None:
    write_checkpoints(manager, probe_job.job_id, 0, [100.0])
    handle = probe_job.handle
    if outcome == "completed":
        await handle.signal(ProbeWorkflow.finish, "ok")
    elif outcome == "failed":
        await handle.signal(ProbeWorkflow.finish, "fail")
    elif outcome == "cancelled":
        await handle.cancel()
    else:
        await handle.terminate("by test")
    body = await _wait_status(http, probe_job.job_id, outcome)
    assert body["total_tasks"] == 1  # closed: the count comes from the catalog
    assert body["average_progress_percent"] == 100.0


async def test_job_status_timed_out(
    http: httpx.AsyncClient, temporal_client: Client, probe_worker: str
) -> None:
    job = f"api-timeout-{uuid.uuid4().hex[:8]}"
    await temporal_client.start_workflow(
        ProbeWorkflow.run, 1, id=job, task_queue=probe_worker,
        execution_timeout=timedelta(seconds=1),
    )
    await _wait_status(http, job, "timed_out")


async def test_unknown_ids_are_404_json(http: httpx.AsyncClient) -> None:
    missing = f"no-such-job-{uuid.uuid4().hex[:8]}"
    for path in (f"/jobs/{missing}", f"/tasks/{missing}:0", f"/storage-info/{missing}:0"):
        r = await http.get(BASE + path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "not_found"
        assert missing in r.json()["detail"]


async def test_malformed_ids_are_422(http: httpx.AsyncClient) -> None:
    for path in ("/jobs/-starts-with-dash", "/tasks/job-without-index", "/tasks/job:x",
                 "/storage-info/job:1:2", "/jobs/" + "a" * 201):
        r = await http.get(BASE + path)
        assert r.status_code == 422, path
        assert r.json()["error"] == "invalid_request"


async def test_health_openapi_docs(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    spec = (await http.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {
        "/api/checkpoints/jobs/{job_id}",
        "/api/checkpoints/tasks/{task_id}",
        "/api/checkpoints/storage-info/{task_id}",
        "/api/checkpoints/tasks/{task_id}/force-checkpoint",
        "/healthz",
    }
    job_props = spec["components"]["schemas"]["JobCheckpoints"]["properties"]
    assert {"job_id", "job_status", "total_tasks", "tasks_with_checkpoints",
            "average_progress_percent", "total_checkpoints_taken", "tasks"} <= set(job_props)
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_last_checkpoint_at_is_iso8601_utc() -> None:
    from worker_app.api.schemas import TaskSummary

    ts = datetime(2026, 1, 7, 10, 30, 45, tzinfo=UTC)
    dumped = TaskSummary(task_id="j:0", progress_percent=1, checkpoint_count=1,
                         last_checkpoint_at=ts, base_checkpoint_size=1).model_dump(mode="json")
    assert dumped["last_checkpoint_at"] == "2026-01-07T10:30:45Z"


async def test_catalog_outage_is_503_not_500(
    http: httpx.AsyncClient, manager: CheckpointManager, store_root: Path
) -> None:
    job = f"outage-{uuid.uuid4().hex[:8]}"
    write_checkpoints(manager, job, 0, [1.0])
    task = f"{job}:0"
    manager.engine.dispose()
    (store_root / "crowdcompute.db").rename(store_root / "moved-away.db")
    (store_root / "crowdcompute.db").mkdir()  # a directory: SQLite cannot open it
    # Every route that reads the catalog: the manager hands out checkpoint.errors only.
    for method, path in (("GET", f"/api/checkpoints/tasks/{task}"),
                         ("GET", f"/api/checkpoints/jobs/{job}"),
                         ("GET", f"/api/checkpoints/storage-info/{task}"),
                         ("GET", "/api/checkpoints/kept"),
                         ("POST", f"/api/checkpoints/tasks/{task}/force-checkpoint")):
        r = await http.request(method, path, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"] == "service_unavailable"


async def test_temporal_down(api_settings: Settings, manager: CheckpointManager) -> None:
    from _servers import free_port

    from worker_app.api import create_app

    async def unreachable() -> Client:
        return await Client.connect(f"127.0.0.1:{free_port()}")  # nothing listens there

    app = create_app(api_settings, manager=manager, temporal_client_factory=unreachable)
    job = f"offline-{uuid.uuid4().hex[:8]}"
    write_checkpoints(manager, job, 0, [45.0])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        known = await c.get(f"{BASE}/jobs/{job}")
        assert known.status_code == 200
        assert (known.json()["job_status"], known.json()["total_tasks"]) == ("unknown", 1)
        unknown = await c.get(f"{BASE}/jobs/never-heard-of-it")
        assert unknown.status_code == 503
        assert unknown.json()["error"] == "service_unavailable"


async def test_task_views_report_full_storage(
    http: httpx.AsyncClient, manager: CheckpointManager, probe_job: ProbeJob
) -> None:
    job = probe_job.job_id
    task = f"{job}:0"
    write_checkpoints(manager, job, 0, [10.0])
    manager.chain.mark_storage_full(task, True)
    detail = (await http.get(f"{BASE}/tasks/{task}")).json()
    since = parse_ts(detail["storage_full_since"])
    assert abs((datetime.now(UTC) - since).total_seconds()) < 60
    summary = (await http.get(f"{BASE}/jobs/{job}")).json()["tasks"][0]
    assert summary["storage_full_since"] == detail["storage_full_since"]
    manager.chain.mark_storage_full(task, False)
    assert (await http.get(f"{BASE}/tasks/{task}")).json()["storage_full_since"] is None
