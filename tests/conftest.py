"""Shared fixtures: one real Temporal dev server per session, a fresh task queue
per test, in-process workers and real ``crowdcompute worker`` processes.

    temporal_env       session  WorkflowEnvironment of a real `temporal server start-dev`
    temporal_address   test     "127.0.0.1:PORT" of that server
    temporal_client    test     raw client (default converter: payloads stay undecoded)
    state_dir          test     fresh CROWDCOMPUTE_STATE_DIR
    task_queue         test     fresh task queue name
    job_histories()             helper: histories of a job and its child workflows
    settings           test     Settings for the above (fast heartbeats)
    conn               test     sdk.connect(settings=settings), the default for sdk.map
    worker             test     an in-process worker on the test's task queue
    worker_process     test     factory: spawn `crowdcompute worker` processes
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from _helpers import TASK_MODULES, WorkerProcess, threading_drain, worker_env
from _servers import dev_server
from _watchdog import pytest_runtest_call, pytest_runtest_protocol  # noqa: F401  (test bounds)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import sdk
from worker_app.settings import Settings
from worker_app.worker import running_worker

if str(TASK_MODULES) not in sys.path:
    sys.path.insert(0, str(TASK_MODULES))


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    async with dev_server() as env:
        yield env


# Per test, derived from whichever ``temporal_env`` is in scope: a module may run on a
# dev server of its own by overriding that fixture alone.
@pytest.fixture
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(temporal_address: str, state_dir: Path, task_queue: str) -> Settings:
    return Settings(
        temporal_address=temporal_address,
        task_queue=task_queue,
        state_dir=state_dir,
        heartbeat_interval=0.5,
        shutdown_grace_seconds=5.0,
    )


@pytest.fixture
async def conn(settings: Settings) -> sdk.Connection:
    return await sdk.connect(settings=settings)


@pytest.fixture
async def worker(settings: Settings, conn: sdk.Connection) -> AsyncIterator[None]:
    async with running_worker(settings, conn.client):
        yield


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_process(**env_overrides)`` starts a worker and waits until it polls.

    Overrides are full variable names, e.g. ``CROWDCOMPUTE_DATABASE_URL=...``.
    """
    started: list[WorkerProcess] = []
    exe = str(Path(sys.executable).with_name("crowdcompute"))

    def start(**overrides: str) -> WorkerProcess:
        proc = subprocess.Popen(
            [exe, "worker"],
            env=worker_env(settings, **overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wp = WorkerProcess(proc)
        started.append(wp)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "worker ready" not in line:
            rest = proc.stdout.read() if proc.wait(timeout=30) is not None else ""
            raise RuntimeError(f"worker did not start: {line}{rest}")
        # Drain output so the child never blocks on a full pipe.
        threading_drain(proc)
        return wp

    yield start
    for wp in started:
        wp.kill()


