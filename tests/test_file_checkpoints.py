"""File checkpoints end to end: a real dev server, real worker processes, a SIGKILL.

The task rewrites a directory every step (one file with the same bytes each time); after
its worker is killed the retry gets exactly the files committed with the state it
resumes from, and the unchanged file's chunks were stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import file_tasks
import pytest
from _helpers import wait_for

import sdk
from checkpoint import CheckpointManager
from worker_app.settings import Settings

pytestmark = pytest.mark.timeout(180)


def _manager(settings: Settings) -> CheckpointManager:
    return CheckpointManager.from_urls(str(settings.database_url), str(settings.blob_url))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _started(log: Path) -> list[tuple[int, int, int, str, int]]:
    if not log.exists():
        return []
    return [tuple(int(w) if w.isdigit() else w for w in line.split())  # type: ignore[misc]
            for line in log.read_text().splitlines()]


async def test_files_resume_exactly_after_a_kill(settings: Settings, conn: sdk.Connection,
                                                worker_process: Any, tmp_path: Path) -> None:
    cfg = {"seed": 7, "steps": 40, "step_seconds": 0.1, "static_bytes": (6 << 20) + 123,
           "workdir": str(tmp_path / "work"), "log": str(tmp_path / "steps.log")}
    first = worker_process()
    job = await sdk.submit(file_tasks.rewrite_files, [cfg], checkpoint_interval=0.3,
                           heartbeat_timeout=2.0, max_attempts=10, job_id="files-kill")
    manager = _manager(settings)
    try:
        task_id = "files-kill:0"
        await wait_for(lambda: (v := manager.task_view(task_id)) is not None
                       and v.checkpoint_count >= 3, timeout=60)
        first.kill()
        worker_process()
        await wait_for(lambda: any(e[3] == "start" and e[1] > 1 for e in _started(Path(cfg["log"]))),
                       timeout=60)
        # resumed: wait for a few checkpoints of the new attempt, then look at what is stored
        await wait_for(lambda: (v := manager.task_view(task_id)) is not None
                       and v.attempt > 1 and len(v.chain) >= 2, timeout=60)
        rows = manager.chain.rows(task_id)
        view = manager.storage_view(task_id)
        result = await asyncio.wait_for(job.result(), 120)
    finally:
        manager.close()
    [state] = result
    # the retry restored exactly the files that go with the step it resumed from
    assert len(state["restores"]) >= 1
    for step, got in state["restores"]:
        assert step >= 1
        assert got == {k: _sha(v) for k, v in file_tasks.expected_files(cfg, step).items()}
    assert state["final"] == {k: _sha(v) for k, v in
                              file_tasks.expected_files(cfg, cfg["steps"]).items()}
    # the static file's chunks: one stored copy, named by every live checkpoint
    assert len(rows) >= 2
    static = [next(f for f in r.files["files"] if f["path"] == "static.bin") for r in rows]
    assert all(s["chunks"] == static[0]["chunks"] for s in static)
    assert len(static[0]["chunks"]) == 2   # 4 MiB + the rest
    keys = {r.files["chunks"][h]["key"] for r in rows for h in static[0]["chunks"]}
    assert len(keys) == 2
    assert view is not None
    file_keys = [b.key for b in view.blobs if b.kind == "file"]
    assert len(file_keys) == len(set(file_keys))
    static_blobs = [b for b in view.blobs if b.key in keys]
    assert sorted(b.raw_bytes for b in static_blobs) == sorted([4 << 20, (2 << 20) + 123])
    assert {b.tier for b in static_blobs} == {"object"}
    # the job's checkpoints (and chunks) are deleted when it completes
    manager = _manager(settings)
    try:
        await wait_for(lambda: manager.chain.rows(task_id) == [], timeout=30)
    finally:
        manager.close()
