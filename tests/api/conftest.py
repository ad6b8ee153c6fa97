"""Fixtures of the monitoring API tests: a real SQLite catalog and file blob
store behind a real CheckpointManager, the real Temporal dev server of the
session (``temporal_env`` in tests/conftest.py), and a probe workflow whose id
is the job id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from worker_app.settings import Settings

if TYPE_CHECKING:  # imported in the fixtures, so the view/metrics tests need no catalog
    from checkpoint import CheckpointManager, CommitInfo

from ._probe import ProbeWorkflow

API_TOKEN = "admin-token-for-tests"
DB_SIZE_LIMIT = 4096  # small, so a test state spreads over both tiers


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """Everything the API may touch lives under here (catalog file and blobs)."""
    root = tmp_path / "store"
    root.mkdir()
    return root


def make_settings(store_root: Path, temporal_address: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": store_root,
        "temporal_address": temporal_address,
        "api_token": API_TOKEN,
        "db_size_limit": DB_SIZE_LIMIT,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def api_settings(store_root: Path, temporal_address: str) -> Settings:
    return make_settings(store_root, temporal_address)


@pytest.fixture
def manager(api_settings: Settings) -> Iterator[CheckpointManager]:
    from checkpoint import CheckpointManager, ManagerConfig

    assert api_settings.database_url is not None and api_settings.blob_url is not None
    m = CheckpointManager.from_urls(
        api_settings.database_url,
        api_settings.blob_url,
        config=ManagerConfig(db_size_limit=DB_SIZE_LIMIT),
    )
    yield m
    m.close()


def client_factory(client: Client) -> Any:
    async def factory() -> Client:
        return client

    return factory


@pytest.fixture
def app(api_settings: Settings, manager: CheckpointManager, temporal_client: Client) -> FastAPI:
    from worker_app.api import create_app

    return create_app(api_settings, manager=manager,
                      temporal_client_factory=client_factory(temporal_client))


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


@dataclass
class ProbeJob:
    job_id: str
    handle: WorkflowHandle[Any, Any]
    total: int


@pytest.fixture
async def probe_worker(temporal_client: Client) -> AsyncIterator[str]:
    queue = f"api-{uuid.uuid4().hex[:10]}"
    async with Worker(temporal_client, task_queue=queue, workflows=[ProbeWorkflow]):
        yield queue


@pytest.fixture
async def probe_job(temporal_client: Client, probe_worker: str) -> AsyncIterator[ProbeJob]:
    job_id = f"api-job-{uuid.uuid4().hex[:10]}"
    handle = await temporal_client.start_workflow(
        ProbeWorkflow.run, 3, id=job_id, task_queue=probe_worker
    )
    yield ProbeJob(job_id, handle, 3)
    try:
        await handle.terminate("test over")
    except Exception:  # already closed
        pass


def training_state(step: int) -> dict[str, Any]:
    """Deterministic state: tiny at step 0 (its blob goes to the database), then
    4096 random doubles (32 KiB, incompressible: the object store)."""
    rng = np.random.default_rng(1234)
    weights = rng.standard_normal(16 if step == 0 else 4096)
    weights[: step * 7] += 1.0
    return {"weights": weights, "step": step, "history": list(range(step))}


def write_checkpoints(
    manager: CheckpointManager, job_id: str, index: int, steps: list[float]
) -> list[CommitInfo]:
    """Commit one checkpoint per entry of ``steps`` (its progress percent)."""
    task_id = f"{job_id}:{index}"
    writer = manager.open_attempt(job_id, task_id, 1).writer
    commits = []
    for n, pct in enumerate(steps):
        commits.append(writer.save(writer.capture(training_state(n)), progress_percent=pct))
    return commits
