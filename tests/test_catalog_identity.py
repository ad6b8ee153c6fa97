"""Catalog identity and state dirs: a worker on the wrong catalog never restarts a task from zero.

Two real worker processes on one Temporal server, each with its own SQLite
catalog (as two machines with local state dirs would have): the task's retry on
the second fails with an error naming both catalogs instead of silently
starting over.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import ckpt_tasks
import pytest
from _helpers import wait_for, worker_env

import sdk
from worker_app.settings import Settings


def _catalog_id(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("SELECT catalog_id FROM catalog").fetchone()[0])
    finally:
        con.close()


def _commits(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


async def test_a_retry_on_another_catalog_fails_naming_both(
        settings: Settings, conn: sdk.Connection, worker_process, tmp_path: Path) -> None:
    a_db, b_db = tmp_path / "a" / "catalog.db", tmp_path / "b" / "catalog.db"
    first = worker_process(CROWDCOMPUTE_DATABASE_URL=f"sqlite:///{a_db}",
                           CROWDCOMPUTE_BLOB_URL=(tmp_path / "a" / "blobs").as_uri())
    cfg = {"seed": 5, "steps": 400, "step_seconds": 0.05, "log": str(tmp_path / "steps.log")}
    job = await sdk.submit(ckpt_tasks.train_numpy, [cfg], checkpoint_interval=0.5,
                           heartbeat_timeout=2.0, max_attempts=3, job_id="catalog-mismatch")
    await wait_for(lambda: _commits(a_db) >= 2, timeout=60)
    handle = conn.client.get_workflow_handle("catalog-mismatch")

    async def heartbeat_names_the_catalog() -> bool:
        desc = await handle.describe()
        return any(b"catalog_id" in p.data for act in desc.raw_description.pending_activities
                   for p in act.heartbeat_details.payloads)

    await wait_for(heartbeat_names_the_catalog, timeout=60)
    first.kill()
    worker_process(CROWDCOMPUTE_DATABASE_URL=f"sqlite:///{b_db}",
                   CROWDCOMPUTE_BLOB_URL=(tmp_path / "b" / "blobs").as_uri())
    with pytest.raises(sdk.JobFailed) as info:
        await job.result()
    message = str(info.value)
    assert "refusing to restart the task from zero" in message
    assert _catalog_id(a_db) in message and _catalog_id(b_db) in message
    assert _commits(b_db) == 0   # nothing was computed again on the wrong catalog


def test_worker_creates_a_fresh_state_dir(settings: Settings, tmp_path: Path) -> None:
    state = tmp_path / "not" / "yet" / "there"
    env = worker_env(settings, CROWDCOMPUTE_STATE_DIR=str(state))
    for name in ("CROWDCOMPUTE_DATABASE_URL", "CROWDCOMPUTE_BLOB_URL"):
        env.pop(name, None)   # the defaults inside the state dir
    proc = subprocess.Popen([str(Path(sys.executable).with_name("crowdcompute")), "worker"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "worker ready" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
        assert (state / "crowdcompute.db").is_file()
    finally:
        proc.kill()
        proc.wait(10)


def test_the_default_state_dir_does_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROWDCOMPUTE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    here = Settings()
    monkeypatch.chdir(tmp_path)
    assert Settings().state_dir == here.state_dir == (tmp_path / "data" / "crowdcompute")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().state_dir == tmp_path / "home" / ".local" / "share" / "crowdcompute"
