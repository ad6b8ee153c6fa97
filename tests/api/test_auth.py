"""Admin and read tokens and the failed-attempt limit, against the real catalog."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI
from temporalio.client import Client

from checkpoint import CheckpointManager
from worker_app.api import create_app
from worker_app.api.auth import FAILURE_WINDOW, MAX_FAILURES, FailureLimiter

from .conftest import API_TOKEN, client_factory, make_settings, write_checkpoints


def force_path(task_id: str) -> str:
    return f"/api/checkpoints/tasks/{task_id}/force-checkpoint"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def a_task(manager: CheckpointManager) -> str:
    job = f"auth-{uuid.uuid4().hex[:8]}"
    write_checkpoints(manager, job, 0, [12.0])
    return f"{job}:0"


async def test_no_token_configured_disables_endpoint(
    store_root: Path, temporal_address: str, manager: CheckpointManager, temporal_client: Client
) -> None:
    settings = make_settings(store_root, temporal_address, api_token=None)
    factory = client_factory(temporal_client)
    app = create_app(settings, manager=manager, temporal_client_factory=factory)
    task = a_task(manager)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for headers in ({}, bearer(API_TOKEN), bearer("")):
            r = await c.post(force_path(task), headers=headers)
            assert r.status_code == 403
            assert "disabled" in r.json()["detail"]
    assert manager.take_force(task) is False  # nothing was recorded


async def test_missing_or_wrong_token_is_401(
    http: httpx.AsyncClient, manager: CheckpointManager
) -> None:
    task = a_task(manager)
    cases = [{}, bearer("wrong"), bearer(API_TOKEN + "x"), bearer(API_TOKEN[:-1]),
             {"Authorization": f"Basic {API_TOKEN}"}, {"Authorization": API_TOKEN}]
    for headers in cases:
        r = await http.post(force_path(task), headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "unauthorized"
    assert manager.take_force(task) is False


async def test_right_token_records_one_pending_request(
    http: httpx.AsyncClient, manager: CheckpointManager
) -> None:
    task = a_task(manager)
    r = await http.post(force_path(task), headers=bearer(API_TOKEN))
    assert r.status_code == 202
    assert r.json() == {"task_id": task, "force_pending": True, "already_pending": False}
    detail = (await http.get(f"/api/checkpoints/tasks/{task}")).json()
    assert detail["force_pending"] is True and detail["force_requested_at"] is not None

    again = await http.post(force_path(task), headers=bearer(API_TOKEN))
    assert again.status_code == 202
    assert again.json()["already_pending"] is True

    # the task's next checkpoint() consumes exactly one request
    assert manager.take_force(task) is True
    assert manager.take_force(task) is False
    third = await http.post(force_path(task), headers=bearer(API_TOKEN))
    assert third.json()["already_pending"] is False
    assert manager.take_force(task) is True


async def test_right_token_unknown_task_is_404(http: httpx.AsyncClient) -> None:
    r = await http.post(force_path(f"nope-{uuid.uuid4().hex[:6]}:0"), headers=bearer(API_TOKEN))
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


async def test_get_is_not_allowed_on_force(
    http: httpx.AsyncClient, manager: CheckpointManager
) -> None:
    r = await http.get(force_path(a_task(manager)))
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"



# --- read token -----------------------------------------------------------------

READ_TOKEN = "read-token-for-tests"


def read_app(store_root: Path, temporal_address: str, manager: CheckpointManager,
             temporal_client: Client, **overrides: object) -> FastAPI:
    values: dict[str, object] = {"api_read_token": READ_TOKEN, **overrides}
    settings = make_settings(store_root, temporal_address, **values)
    return create_app(settings, manager=manager, temporal_client_factory=client_factory(temporal_client))


def asgi(app: FastAPI, client: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def read_paths(app: FastAPI, task: str) -> list[str]:
    """Every GET endpoint of the API (from the app's schema), filled in for ``task``."""
    job = task.rsplit(":", 1)[0]
    paths = sorted(path.format(job_id=job, task_id=task)
                   for path, operations in app.openapi()["paths"].items()
                   if "get" in operations and path.startswith("/api/"))
    # the enumeration finds at least the endpoints this test was written against
    assert {f"/api/checkpoints/tasks/{task}", f"/api/checkpoints/storage-info/{task}",
            f"/api/checkpoints/jobs/{job}", "/api/checkpoints/kept"} <= set(paths), paths
    return paths


async def test_get_endpoints_open_without_read_token(
    http: httpx.AsyncClient, manager: CheckpointManager
) -> None:
    task = a_task(manager)
    r = await http.get(f"/api/checkpoints/tasks/{task}")
    assert r.status_code == 200
    assert r.json()["task_id"] == task


async def test_read_token_protects_get_endpoints(
    store_root: Path, temporal_address: str, manager: CheckpointManager, temporal_client: Client
) -> None:
    task = a_task(manager)
    app = read_app(store_root, temporal_address, manager, temporal_client)
    app.state.auth_limiter = FailureLimiter(max_failures=1000)  # the limit has tests of its own
    async with asgi(app) as c:
        for path in read_paths(app, task):
            for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {READ_TOKEN}"}):
                r = await c.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"] == "unauthorized"
        r = await c.get(f"/api/checkpoints/tasks/{task}", headers=bearer(READ_TOKEN))
        assert r.status_code == 200
        assert r.json()["task_id"] == task
        r = await c.get(f"/api/checkpoints/storage-info/{task}", headers=bearer(READ_TOKEN))
        assert r.status_code == 200
        # the admin token also reads; the read token is no admin token
        r = await c.get(f"/api/checkpoints/tasks/{task}", headers=bearer(API_TOKEN))
        assert r.status_code == 200
        r = await c.post(force_path(task), headers=bearer(READ_TOKEN))
        assert r.status_code == 401
        assert manager.take_force(task) is False
        # liveness, the schema and the docs stay open
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200


async def test_read_token_without_admin_token(
    store_root: Path, temporal_address: str, manager: CheckpointManager, temporal_client: Client
) -> None:
    task = a_task(manager)
    app = read_app(store_root, temporal_address, manager, temporal_client, api_token=None)
    async with asgi(app) as c:
        assert (await c.get(f"/api/checkpoints/tasks/{task}", headers=bearer(API_TOKEN))).status_code == 401
        assert (await c.get(f"/api/checkpoints/tasks/{task}", headers=bearer(READ_TOKEN))).status_code == 200
        assert (await c.post(force_path(task), headers=bearer(READ_TOKEN))).status_code == 403


# --- failed attempts are rate-limited per client ----------------------------------


async def test_failed_admin_attempts_get_429_per_client(
    app: FastAPI, manager: CheckpointManager
) -> None:
    task = a_task(manager)
    async with asgi(app, "10.0.0.1") as attacker, asgi(app, "10.0.0.2") as other:
        for n in range(MAX_FAILURES):
            r = await attacker.post(force_path(task), headers=bearer(f"guess-{n}"))
            assert r.status_code == 401
        # now even the right token is refused, without being compared
        for headers in (bearer("guess-again"), bearer(API_TOKEN)):
            r = await attacker.post(force_path(task), headers=headers)
            assert r.status_code == 429
            assert r.json()["error"] == "too_many_requests"
            assert 1 <= int(r.headers["retry-after"]) <= FAILURE_WINDOW
        assert manager.take_force(task) is False
        # another client is not affected
        r = await other.post(force_path(task), headers=bearer(API_TOKEN))
        assert r.status_code == 202
        assert manager.take_force(task) is True


async def test_missing_credentials_are_not_counted(
    app: FastAPI, manager: CheckpointManager
) -> None:
    task = a_task(manager)
    async with asgi(app, "10.0.0.3") as c:
        for _ in range(MAX_FAILURES + 5):
            assert (await c.post(force_path(task))).status_code == 401
        assert (await c.post(force_path(task), headers=bearer(API_TOKEN))).status_code == 202


async def test_failed_read_attempts_count_too_and_the_window_expires(
    store_root: Path, temporal_address: str, manager: CheckpointManager, temporal_client: Client
) -> None:
    task = a_task(manager)
    app = read_app(store_root, temporal_address, manager, temporal_client)
    app.state.auth_limiter = FailureLimiter(max_failures=3, window=1.0)
    path = f"/api/checkpoints/tasks/{task}"
    async with asgi(app, "10.0.0.4") as c:
        for _ in range(3):
            assert (await c.get(path, headers=bearer("wrong"))).status_code == 401
        r = await c.get(path, headers=bearer(READ_TOKEN))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        await asyncio.sleep(1.1)
        assert (await c.get(path, headers=bearer(READ_TOKEN))).status_code == 200


def test_limiter_forgets_old_failures() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window=10.0, clock=lambda: now[0])
    limiter.record_failure("a")
    now[0] = 6.0
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 4  # the first failure leaves the window at 10
    assert limiter.retry_after("b") is None
    now[0] = 10.0
    assert limiter.retry_after("a") is None
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 6
