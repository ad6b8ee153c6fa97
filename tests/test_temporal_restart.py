"""The Temporal dev server SIGKILLed mid-job and restarted on the same database file.

A private ``temporal server start-dev --db-filename F`` on free ports, a real
``crowdcompute worker`` process and a checkpointed numpy job. Once every task
has committed checkpoints the server is killed (SIGKILL: no shutdown, whatever
it had not written to F is lost), the worker keeps running without it for a
while, then the server is started again on F and the same port. The job must
finish with results identical to an uninterrupted run, and afterwards neither
the catalog nor the blob directory may hold anything of it.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ckpt_tasks
import numpy as np
import pytest
from _helpers import wait_for, worker_env
from _servers import free_port

import sdk
from worker_app.dev import DEV_SERVER_ARGS, find_temporal_binary, port_in_use
from worker_app.settings import Settings

pytestmark = pytest.mark.timeout(180)

STEPS, STEP_SECONDS = 200, 0.05


class DevServer:
    """``temporal server start-dev`` on a fixed port and database file; restartable."""

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [find_temporal_binary(), "server", "start-dev", "--db-filename", str(self.db),
               "--port", str(self.port), "--ip", "127.0.0.1", "--headless",
               "--log-level", "error", *DEV_SERVER_ARGS]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dev server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    srv = DevServer(tmp_path / "temporal.db", free_port(), tmp_path / "temporal.log")
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def restart_settings(server: DevServer, tmp_path: Path) -> Settings:
    state = tmp_path / "state"
    state.mkdir()
    return Settings(temporal_address=server.address, task_queue=f"restart-{uuid.uuid4().hex[:8]}",
                    state_dir=state, heartbeat_interval=0.5, shutdown_grace_seconds=5.0,
                    max_concurrent_tasks=4)  # all three tasks at once (the default is the cores)


@pytest.fixture
def worker(restart_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    out = tmp_path / "worker.log"
    with out.open("a") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("crowdcompute")), "worker"],
                                env=worker_env(restart_settings), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while "worker ready" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
        time.sleep(0.1)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def catalog_counts(settings: Settings) -> tuple[int, int, int]:
    """(checkpoint rows, SQL blob rows, files of any name in the blob directory)."""
    con = sqlite3.connect(str(settings.database_url).removeprefix("sqlite:///"))
    try:
        rows = con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
        blobs = con.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    except sqlite3.OperationalError:  # the worker has not migrated the catalog yet
        rows = blobs = 0
    finally:
        con.close()
    blob_dir = Path(str(settings.blob_url).removeprefix("file://"))
    files = sum(1 for p in blob_dir.rglob("*") if p.is_file()) if blob_dir.exists() else 0
    return rows, blobs, files


def tasks_with_checkpoints(settings: Settings) -> int:
    con = sqlite3.connect(str(settings.database_url).removeprefix("sqlite:///"))
    try:
        return int(con.execute("SELECT COUNT(DISTINCT task_id) FROM checkpoints").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def executed_steps(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.split()[3] == "step")


async def job_result(settings: Settings, job_id: str, timeout: float) -> list[Any]:
    """The job's results through a fresh connection (the old channel saw the server die)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await sdk.connect(settings=settings)
            break
        except sdk.TemporalUnreachable:  # the port is open before the frontend is healthy
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    job = sdk.JobHandle(job_id, conn.client.get_workflow_handle(job_id), conn)
    return await asyncio.wait_for(job.result(), timeout)


async def test_server_sigkill_and_restart_mid_job(server: DevServer, restart_settings: Settings,
                                                  worker: subprocess.Popen[str],
                                                  tmp_path: Path) -> None:
    settings = restart_settings
    items = [{"seed": 31 + i, "steps": STEPS, "step_seconds": STEP_SECONDS,
              "log": str(tmp_path / "steps.log")} for i in range(3)]
    await sdk.connect(settings=settings)
    job = await sdk.submit(ckpt_tasks.train_numpy, items, checkpoint_interval=0.5,
                           heartbeat_timeout=2.0, max_attempts=30, job_id="restart")
    await wait_for(lambda: tasks_with_checkpoints(settings) == len(items), timeout=60)
    server.kill()
    assert 0 < executed_steps(tmp_path / "steps.log") < len(items) * STEPS // 2  # mid-job
    await asyncio.sleep(3.0)  # longer than the heartbeat timeout: the server may retry them
    assert worker.poll() is None  # the worker outlives its server
    server.start()
    results = await job_result(settings, job.job_id, timeout=120)
    for cfg, got in zip(items, results, strict=True):
        want = ckpt_tasks.reference_numpy(cfg)
        assert got["step"] == want["step"] == STEPS
        assert got["losses"] == want["losses"]
        assert got["w"].tobytes() == want["w"].tobytes()
        assert isinstance(got["w"], np.ndarray)
    await wait_for(lambda: catalog_counts(settings) == (0, 0, 0), timeout=30)
