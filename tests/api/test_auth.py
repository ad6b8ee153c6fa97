"""Admin auth of the force-checkpoint endpoint, against the real catalog."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from temporalio.client import Client

from checkpoint import CheckpointManager
from worker_app.api import create_app

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

