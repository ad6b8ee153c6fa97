"""The endpoints against a real running job: the session's dev server, an
in-process worker with checkpointing (and the Prometheus observer) wired in, a
checkpointing numpy training task, and the API built from the same settings
the worker uses (default manager, default Temporal connection)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ckpt_tasks
import httpx
import pytest

import sdk
from worker_app import metrics
from worker_app.api import create_app
from worker_app.settings import Settings

from .conftest import API_TOKEN

BASE = "/api/checkpoints"


@pytest.fixture
async def checkpointing_worker(settings: Settings, conn: sdk.Connection) -> AsyncIterator[None]:
    from activities.checkpointing import CheckpointService
    from checkpoint import CheckpointManager
    from worker_app.worker import build_worker

    assert settings.database_url and settings.blob_url
    manager = CheckpointManager.from_urls(settings.database_url, settings.blob_url)
    service = CheckpointService(manager, observer=metrics.PrometheusObserver())
    try:
        async with build_worker(conn.client, settings, checkpoints=service):
            yield
    finally:
        manager.close()


def written_bytes() -> float:
    return sum(metrics.REGISTRY.get_sample_value("crowdcompute_checkpoint_bytes_written_total",
                                                 {"tier": t}) or 0.0 for t in metrics.TIERS)


async def poll(
    http: httpx.AsyncClient, path: str, until: Callable[[Any], bool], timeout: float = 30
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await http.get(path)).json()
        if until(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, f"{path}: last {body}"
        await asyncio.sleep(0.1)


async def test_live_job(settings: Settings, checkpointing_worker: None, tmp_path: Path) -> None:
    bytes_before = written_bytes()
    api_settings = settings.model_copy(update={"api_token": API_TOKEN})
    app = create_app(api_settings)  # its own CheckpointManager and Temporal client

    def cfg(seed: int) -> dict:
        return {"seed": seed, "steps": 40, "step_seconds": 0.1, "dim": 256,
                "log": str(tmp_path / f"steps-{seed}.log")}

    job_id = f"live-{uuid.uuid4().hex[:8]}"
    job = await sdk.submit(ckpt_tasks.train_numpy, [cfg(0), cfg(1)], checkpoint_interval=0.3,
                           job_id=job_id)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        body = await poll(http, f"{BASE}/jobs/{job_id}",
                          lambda b: b.get("tasks_with_checkpoints") == 2)
        assert body["job_status"] == "running"
        assert body["total_tasks"] == 2
        assert [t["task_id"] for t in body["tasks"]] == [f"{job_id}:0", f"{job_id}:1"]
        for t in body["tasks"]:
            assert t["checkpoint_count"] >= 1 and 0 < t["progress_percent"] <= 100
            assert t["attempt"] == 1 and t["status"] == "running"
            assert t["last_checkpoint_at"] is not None and t["base_checkpoint_size"] > 0

        task = f"{job_id}:0"
        detail = (await http.get(f"{BASE}/tasks/{task}")).json()
        assert detail["chain"] and detail["chain"][0]["kind"] == "base"
        assert detail["head_seq"] == detail["chain"][-1]["seq"]
        info = (await http.get(f"{BASE}/storage-info/{task}")).json()
        assert info["totals"]["blob_count"] >= 1

        forced = await http.post(f"{BASE}/tasks/{task}/force-checkpoint",
                                 headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert forced.status_code == 202 and forced.json()["already_pending"] is False
        # the running task picks the request up at its next checkpoint() call
        await poll(http, f"{BASE}/tasks/{task}", lambda d: d["force_pending"] is False)

        results = await job.result()
        assert [r["step"] for r in results] == [40, 40]
        done = await poll(http, f"{BASE}/jobs/{job_id}", lambda b: b["job_status"] == "completed")
        assert done["total_tasks"] == 2
        # finished tasks keep their counters; their checkpoint data is gone
        after = (await http.get(f"{BASE}/storage-info/{task}")).json()
        assert after["blobs"] == [] and after["totals"]["stored_bytes"] == 0
    assert written_bytes() > bytes_before  # the worker's observer fed the metrics
