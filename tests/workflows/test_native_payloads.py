"""Items and results are Temporal-native payloads: JSON as JSON, others with an
encoding of their own; jobs start from the `temporal` CLI and plain clients."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tasks
from _helpers import worker_env
from _servers import free_port
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

import sdk
from sdk._jobs import STEPS_ONLY_INTERVAL, job_summary
from sdk._values import decode_value, encode_value, is_json_value
from worker_app.codec_server import decode_payloads, preview_payload
from worker_app.dev import find_temporal_binary
from worker_app.settings import Settings
from workflows.models import TaskOptions
from workflows.payloads import ENCODING_LIST, ENCODING_NPY, ENCODING_PICKLE, encoding_of, pack


async def temporal(address: str, *args: str, timeout: float = 60) -> str:
    """The `temporal` CLI against the test server; its stdout.

    Asynchronous: the in-process worker runs on this event loop.
    """
    proc = await asyncio.create_subprocess_exec(
        find_temporal_binary(), *args, "--address", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _events(address: str, workflow_id: str) -> list[dict[str, Any]]:
    shown = json.loads(await temporal(address, "workflow", "show", "--workflow-id", workflow_id,
                                      "--output", "json"))
    events: list[dict[str, Any]] = shown["events"]
    return events


def _payloads(events: list[dict[str, Any]], attributes: str, field: str) -> list[dict[str, Any]]:
    for event in events:
        if attributes in event:
            found: list[dict[str, Any]] = event[attributes][field]["payloads"]
            return found
    raise AssertionError(f"no {attributes} in the history")


def test_values_round_trip_with_their_own_encodings() -> None:
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert encoding_of(encode_value({"seed": 1, "steps": [1.5, None]})) == "json/plain"
    assert encode_value({"seed": 1}).data == b'{"seed":1}'
    assert encoding_of(encode_value(arr)) == ENCODING_NPY
    # Not JSON exactly: a tuple, int keys, NaN would change on the way; pickled instead.
    for value in [(1, 2), {1: "a"}, float("nan"), {1, 2}]:
        assert not is_json_value(value)
        assert encoding_of(encode_value(value)) == ENCODING_PICKLE
    for value in [(1, 2), {1: "a"}, b"raw", None, "text", [1, {"a": [True]}]]:
        assert decode_value(encode_value(value)) == value
    back = decode_value(encode_value(arr))
    assert (back.dtype, back.tolist()) == (arr.dtype, arr.tolist())
    mixed = pack([encode_value(1), encode_value(arr)])
    assert encoding_of(mixed) == ENCODING_LIST
    assert [type(v) for v in decode_value(mixed)] == [int, np.ndarray]


async def test_json_items_and_results_are_json_in_the_history(
        worker: None, conn: sdk.Connection, temporal_address: str) -> None:
    job_id = f"json-{uuid.uuid4().hex[:8]}"
    items = [{"seed": 1, "steps": 300}, {"seed": 2, "steps": 5}]
    out = await sdk.map(tasks.context_info, items, job_id=job_id)
    assert [o["index"] for o in out] == [0, 1]
    events = await _events(temporal_address, job_id)
    [started] = _payloads(events, "workflowExecutionStartedEventAttributes", "input")
    assert started["metadata"]["encoding"] == base64.b64encode(b"json/plain").decode()
    assert json.loads(base64.b64decode(started["data"]))["items"] == items
    [result] = _payloads(events, "workflowExecutionCompletedEventAttributes", "result")
    results = json.loads(base64.b64decode(result["data"]))
    assert [r["task_id"] for r in results] == [f"{job_id}:0", f"{job_id}:1"]
    # The history's JSON keeps payloads raw (replayable); the detailed view and
    # `describe` / `result` show them as JSON.
    detailed = await temporal(temporal_address, "workflow", "show", "--workflow-id", job_id,
                              "--detailed")
    assert "input[0].items[0].seed: 1" in detailed
    assert "input[0].items[1].steps: 5" in detailed
    assert "userMetadata.summary: task 1 of tasks:context_info" in detailed
    described = json.loads(await temporal(temporal_address, "workflow", "describe",
                                          "--workflow-id", job_id, "--output", "json"))
    assert described["result"] == out
    assert described["executionConfig"]["userMetadata"]["summary"] == (
        "tasks:context_info over 2 items, no checkpoints")


async def test_a_numpy_item_round_trips_and_the_codec_server_previews_it(
        worker: None, conn: sdk.Connection, settings: Settings, temporal_address: str) -> None:
    job_id = f"npy-{uuid.uuid4().hex[:8]}"
    arr = np.arange(12.0).reshape(3, 4)
    [out] = await sdk.map(tasks.array_stats, [arr], job_id=job_id)
    np.testing.assert_array_equal(out, arr * 2)
    history = await conn.client.get_workflow_handle(f"{job_id}--batch-0").fetch_history()
    task_inputs = [e.activity_task_scheduled_event_attributes for e in history.events
                   if e.activity_task_scheduled_event_attributes.activity_type.name == "run_task"]
    [scheduled] = task_inputs
    item = scheduled.input.payloads[1]
    assert encoding_of(item) == ENCODING_NPY  # .npy bytes, not base64 in JSON
    assert scheduled.input.payloads[0].data.startswith(b"{")
    [preview] = await decode_payloads(conn.client.data_converter, [item])
    shown = json.loads(preview.data)
    assert (shown["type"], shown["shape"], shown["dtype"]) == ("numpy.ndarray", [3, 4], "float64")
    assert shown["repr"].startswith("array([[ 0.,  1.,  2.,  3.]")


async def test_the_codec_server_speaks_the_remote_codec_protocol(
        worker: None, conn: sdk.Connection, settings: Settings, temporal_address: str) -> None:
    import httpx

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("crowdcompute")), "codec-server",
        "--port", str(port), env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"codec server on" in line, line
        url = f"http://127.0.0.1:{port}"
        big = np.zeros((600, 100))  # 480 kB: stored externally
        [ref] = await conn.client.data_converter.encode([big])
        assert len(ref.data) < 1024
        pickled = encode_value(("a", 1))
        body = {"payloads": [_wire(p) for p in [ref, pickled, encode_value(7)]]}
        # a reference to a payload that is not in the store (deleted, say)
        missing = Payload()
        missing.CopyFrom(ref)
        claim = json.loads(ref.data)
        digest = claim["claimData"]["sha256"]
        missing.data = ref.data.replace(digest.encode(), b"0" * 64)
        async with httpx.AsyncClient() as http:
            decoded = (await http.post(f"{url}/decode", json=body,
                                       headers={"X-Namespace": "default"})).json()
            encoded = (await http.post(f"{url}/encode", json=body)).json()
            broken = (await http.post(f"{url}/decode", json={"payloads": [
                _wire(missing), _wire(encode_value(8))]})).json()
            preflight = await http.options(f"{url}/decode", headers={
                "Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace"})
        values = [json.loads(base64.b64decode(p["data"])) for p in decoded["payloads"]]
        assert values[0]["shape"] == [600, 100]
        assert values[1] == {"type": "builtins.tuple", "encoding": "pickle",
                             "size": len(pickled.data)}
        assert values[2] == 7
        assert encoded == body
        [error, eight] = [json.loads(base64.b64decode(p["data"])) for p in broken["payloads"]]
        assert error["error"].startswith("cannot fetch the stored payload")
        assert eight == 8
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:8233"
        # The CLI renders a task's NumPy item through it.
        job_id = f"codec-{uuid.uuid4().hex[:8]}"
        await sdk.map(tasks.array_stats, [np.ones((2, 5), dtype=np.float32)], job_id=job_id)
        shown = await temporal(temporal_address, "workflow", "show", "--workflow-id",
                               f"{job_id}--batch-0", "--detailed", "--codec-endpoint", url)
        assert "input[1].dtype: float32" in shown
        assert "input[1].shape[1]: 5" in shown
        assert "result[0].type: numpy.ndarray" in shown
    finally:
        proc.terminate()
        await proc.wait()


def _wire(payload: Payload) -> dict[str, Any]:
    return {"metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
            "data": base64.b64encode(payload.data).decode()}


def test_previews_of_pickles_never_unpickle() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("unpickled",))

    shown = json.loads(preview_payload(encode_value([Boom()])).data)
    assert shown == {"type": "builtins.list", "encoding": "pickle", "size": shown["size"]}


async def test_a_job_started_with_the_temporal_cli_runs(
        worker: None, settings: Settings, temporal_address: str) -> None:
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    job = json.dumps({"job_id": job_id, "fn": "tasks:square", "items": [1, 2, 3]})
    await temporal(temporal_address, "workflow", "start", "--type", "JobWorkflow", "--task-queue",
             settings.task_queue, "--workflow-id", job_id, "--input", job)
    shown = await temporal(temporal_address, "workflow", "result", "--workflow-id", job_id)
    assert "Result          [1,4,9]" in shown
    result = json.loads(await temporal(temporal_address, "workflow", "result", "--workflow-id",
                                       job_id, "--output", "json"))
    assert result["result"] == [1, 4, 9]


async def test_a_job_started_by_a_plain_temporal_client_runs(
        worker: None, settings: Settings, temporal_client: Client) -> None:
    job_id = f"plain-{uuid.uuid4().hex[:8]}"
    result = await temporal_client.execute_workflow(
        "JobWorkflow", {"job_id": job_id, "fn": "tasks:square", "items": [4, 5]},
        id=job_id, task_queue=settings.task_queue)
    assert result == [16, 25]


def test_job_summaries_name_function_items_and_checkpointing() -> None:
    assert job_summary("m:f", 1, TaskOptions()) == "m:f over 1 item, no checkpoints"
    assert job_summary("m:f", 8, TaskOptions(checkpoint_interval=10.0)) == (
        "m:f over 8 items, checkpoint every 10 s")
    both = TaskOptions(checkpoint_interval=2.5, checkpoint_every_steps=100)
    assert job_summary("m:f", 2, both) == "m:f over 2 items, checkpoint every 2.5 s or 100 steps"
    steps = TaskOptions(checkpoint_interval=STEPS_ONLY_INTERVAL, checkpoint_every_steps=50)
    assert job_summary("m:f", 2, steps) == "m:f over 2 items, checkpoint every 50 steps"


async def test_a_first_format_job_still_returns_decoded_results(
    worker: None, conn: sdk.Connection, settings: Settings
) -> None:
    """A job of the first payload format (base64 pickles, no payload patch marker, as
    a job started before the upgrade runs on) returns its values, not base64 text;
    a payload-format job whose results are strings keeps them as they are."""
    from sdk import _codec
    from sdk._jobs import JobHandle
    from workflows.job import JobWorkflow
    from workflows.models import JobInput

    job_id = f"first-format-{uuid.uuid4().hex[:8]}"
    handle = await conn.client.start_workflow(
        JobWorkflow.run, JobInput(job_id=job_id, fn="tasks:square",
                                  items=[_codec.encode_value(i) for i in (1, 2, 3)],
                                  legacy_payloads=True),
        id=job_id, task_queue=settings.task_queue)
    assert await JobHandle(job_id, handle, conn).result() == [1, 4, 9]
    # Strings that look like base64 pickles stay strings in a payload-format job.
    lookalikes = [_codec.encode_value(i) for i in (1, 2)]
    assert await sdk.map(tasks.shout, lookalikes) == [x.upper() for x in lookalikes]


async def test_a_first_format_job_in_stored_batches_still_completes(
    worker: None, conn: sdk.Connection, settings: Settings
) -> None:
    """The same for a job whose items are in the item store as base64 lines: its
    batches read and write the first format (one argument per item store call)."""
    import json as _json

    from sdk import _codec
    from sdk._job_items import ITEMS, build_job_item_store
    from sdk._jobs import JobHandle
    from workflows.job import JobWorkflow
    from workflows.models import JobInput

    job_id = f"first-stored-{uuid.uuid4().hex[:8]}"
    store = build_job_item_store(settings)
    lines = [_codec.encode_value(i) for i in range(5)]
    for k in range(3):
        store.put_chunk(job_id, ITEMS, k, lines[2 * k : 2 * k + 2])
    store._put(f"jobs/{job_id}/manifest", _json.dumps({"count": 5, "chunk_size": 2}).encode())
    handle = await conn.client.start_workflow(
        JobWorkflow.run, JobInput(job_id=job_id, fn="tasks:square", items=[], item_count=5,
                                  batch_size=2, window=2, legacy_payloads=True),
        id=job_id, task_queue=settings.task_queue)
    assert await JobHandle(job_id, handle, conn).result() == [i * i for i in range(5)]
