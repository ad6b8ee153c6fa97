"""``keep="final"``, ``warm_start_from`` and ``crowdcompute gc --older-than`` against a real
dev server, an in-process worker, the SQLite catalog and the REST API."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import file_tasks
import httpx
import pytest
from _helpers import worker_env

import sdk
from checkpoint import CheckpointManager
from worker_app.api import create_app
from worker_app.settings import Settings

pytestmark = pytest.mark.timeout(180)


def _manager(settings: Settings) -> CheckpointManager:
    return CheckpointManager.from_urls(str(settings.database_url), str(settings.blob_url))


def _cfgs(tmp_path: Path, steps: int, n: int = 2) -> list[dict[str, Any]]:
    return [{"steps": steps + i, "workdir": str(tmp_path / "work")} for i in range(n)]


def _count_digest(n: int) -> dict[str, str]:
    return {"count.txt": hashlib.sha256(f"{n}\n".encode()).hexdigest()}


async def test_keep_final_then_warm_start_then_gc(settings: Settings, conn: sdk.Connection,
                                                  worker: None, tmp_path: Path) -> None:
    # An interval no call reaches: only the final checkpoint keep="final" takes is committed.
    first = await sdk.map(file_tasks.count_up, _cfgs(tmp_path, 5), checkpoint_interval=600.0,
                          keep="final", job_id="keep-a")
    assert [r["end"] for r in first] == [5, 6]
    manager = _manager(settings)
    try:
        kept = manager.kept_tasks("keep-a")
        assert [t.task_id for t in kept] == ["keep-a:0", "keep-a:1"]
        assert all(t.kept_at is not None and t.status == "kept" for t in kept)
        final = manager.restore_kept("keep-a:1")
        assert final is not None and final.state["state"] == {"n": 6}

        # The REST API lists them.
        app = create_app(settings, manager=manager)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as client:
            body = (await client.get("/api/checkpoints/kept", params={"job_id": "keep-a"})).json()
            assert [(k["task_id"], k["files"]) for k in body["kept"]] == [
                ("keep-a:0", 1), ("keep-a:1", 1)]
            assert (await client.get("/api/checkpoints/kept",
                                     params={"job_id": "other"})).json() == {"kept": []}

        # A new job starts each task from the kept checkpoint of its index; by default
        # its own checkpoints are deleted when it completes, the kept ones stay.
        second = await sdk.map(file_tasks.count_up, _cfgs(tmp_path, 3),
                               checkpoint_interval=600.0, warm_start_from="keep-a",
                               job_id="keep-b")
        assert [r["start"] for r in second] == [{"n": 5}, {"n": 6}]
        assert [r["files"] for r in second] == [_count_digest(5), _count_digest(6)]
        assert [r["end"] for r in second] == [8, 10]
        assert manager.kept_tasks("keep-b") == []
        assert manager.chain.rows("keep-b:0") == []
        assert len(manager.kept_tasks("keep-a")) == 2

        # A job that kept nothing: a clear, non-retried error, not a fresh start.
        with pytest.raises(sdk.JobFailed) as failed:
            await sdk.map(file_tasks.count_up, _cfgs(tmp_path, 1, n=1),
                          checkpoint_interval=600.0, warm_start_from="keep-b", job_id="keep-c")
        assert "WarmStartNotFound" in str(failed.value)
        assert "keep-b:0 kept no final checkpoint" in str(failed.value)

        # gc keeps them unless they are older than --older-than
        gc = [str(Path(sys.executable).with_name("crowdcompute")), "gc", "--grace", "0"]
        run = subprocess.run([*gc, "--older-than", "1"], env=worker_env(settings),
                             capture_output=True, text=True, timeout=60, check=True)
        assert "deleted 0 kept final checkpoint(s)" in run.stdout
        assert len(manager.kept_tasks("keep-a")) == 2
        run = subprocess.run([*gc, "--older-than", "0"], env=worker_env(settings),
                             capture_output=True, text=True, timeout=60, check=True)
        assert "deleted 2 kept final checkpoint(s)" in run.stdout
        assert manager.kept_tasks() == []
        assert manager.chain.rows("keep-a:1") == []
        assert manager.storage_view("keep-a:1") is not None
        assert manager.storage_view("keep-a:1").blobs == ()  # type: ignore[union-attr]
    finally:
        manager.close()


async def test_keep_and_warm_start_are_checked_at_the_edge() -> None:
    # refused before any connection is made
    with pytest.raises(ValueError, match="keep must be 'final' or None"):
        await sdk.submit(file_tasks.count_up, [], keep="all", checkpoint_interval=1.0)
    with pytest.raises(ValueError, match="needs a checkpointed job"):
        await sdk.submit(file_tasks.count_up, [], keep="final")
    with pytest.raises(ValueError, match="needs a checkpointed job"):
        await sdk.submit(file_tasks.count_up, [], warm_start_from="keep-a")
    with pytest.raises(ValueError, match="invalid job id"):
        await sdk.submit(file_tasks.count_up, [], warm_start_from="no/such",
                         checkpoint_interval=1.0)
