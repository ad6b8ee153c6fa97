"""Record workflow histories for the replay test (run by hand: ``python tests/workflows/histories/record.py``).

Starts a dev server and an in-process worker, runs one job of each shape and
writes each workflow's history as JSON beside this file, named
``<format>-<shape>[--batch-k].json``; ``HISTORY_SHAPE=windowed`` records only
a job of stored items (its runs and a batch, gzipped). Histories recorded by earlier versions
of the workflows are kept: the replay test checks that today's code still
replays every one of them. It records today's payload format: ``v1`` and ``v2``
were recorded by earlier versions of this script (base64 pickles in JSON),
``v3`` (``HISTORY_FORMAT=v3``) with Temporal-native payloads.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[1]), str(HERE.parents[1] / "task_modules")]

from temporalio.testing import WorkflowEnvironment  # noqa: E402

import sdk  # noqa: E402
from worker_app.dev import DEV_SERVER_ARGS, find_temporal_binary  # noqa: E402
from worker_app.settings import Settings  # noqa: E402
from worker_app.worker import running_worker  # noqa: E402
from workflows.job import JobWorkflow  # noqa: E402
from workflows.models import JobInput, TaskOptions  # noqa: E402


async def main(fmt: str) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_binary(), dev_server_extra_args=DEV_SERVER_ARGS,
        ui=False, dev_server_log_level="error")
    try:
        with tempfile.TemporaryDirectory() as state:
            settings = Settings(temporal_address=env.client.service_client.config.target_host,
                                task_queue="record", state_dir=Path(state), heartbeat_interval=0.5)
            conn = await sdk.connect(settings=settings)
            async with running_worker(settings, conn.client):
                if os.environ.get("HISTORY_SHAPE") == "windowed":
                    await record_windowed(conn, fmt)
                else:
                    await _record(conn, fmt)
    finally:
        await env.shutdown()


async def _record(conn: sdk.Connection, fmt: str) -> None:
    import numpy as np
    import tasks

    client = conn.client
    jobs = {
        "plain": (tasks.square, [1, 2, 3], {}),
        # not JSON: its item goes through the item store, as a payload of its own
        "numpy": (tasks.array_stats, [np.arange(4.0)], {}),
        "checkpointed": ("ckpt_tasks:train_numpy", [{"seed": 1, "steps": 3, "step_seconds": 0.05,
                                                       "log": os.devnull}],
                         {"checkpoint_interval": 0.01}),
        "failed": (tasks.fail_always, [1], {"max_attempts": 1}),
    }
    for shape, (fn, items, options) in jobs.items():
        job = await sdk.submit(fn, items, job_id=f"{fmt}-{shape}", **options)
        try:
            await job.result()
        except Exception:
            pass
        await _save(client, f"{fmt}-{shape}")
    await _save(client, f"{fmt}-numpy--batch-0")
    # a job large enough for child batches (batch_size is a workflow input)
    handle = await client.start_workflow(
        JobWorkflow.run,
        JobInput(job_id=f"{fmt}-batched", fn="tasks:square", items=list(range(5)),
                 options=TaskOptions(), batch_size=2),
        id=f"{fmt}-batched", task_queue=conn.settings.task_queue)
    await handle.result()
    for wid in [f"{fmt}-batched"] + [f"{fmt}-batched--batch-{k}" for k in range(3)]:
        await _save(client, wid)
    # a cancelled job
    job = await sdk.submit(tasks.sleep_until_cancelled, [30.0], job_id=f"{fmt}-cancelled")
    await asyncio.sleep(2.0)
    await job.cancel()
    try:
        await job.result()
    except Exception:
        pass
    await _save(client, f"{fmt}-cancelled")


async def record_windowed(conn: sdk.Connection, fmt: str) -> None:
    """A job of stored items in a window of batches: each run of the job (it
    continues as new twice) and one batch, gzipped as ``<fmt>-windowed-run<k>``."""
    import gzip

    from sdk._jobs import start_job
    from sdk._values import encode_value

    job_id = f"{fmt}-windowed"
    job = await start_job(conn, job_id, "tasks:square", [encode_value(i) for i in range(25)],
                          TaskOptions(), batch_size=5, window=2, batches_per_run=2)
    await job.result()
    from _helpers import job_runs

    client = conn.client
    runs = await job_runs(client, job_id)
    batch = await client.get_workflow_handle(f"{job_id}--batch-0").fetch_history()
    for name, history in [*((f"{job_id}-run{k}", h) for k, h in enumerate(runs)),
                          (f"{job_id}--batch-0", batch)]:
        (HERE / f"{name}.json.gz").write_bytes(gzip.compress(history.to_json().encode()))
        print(f"recorded {name}: {len(history.events)} events")


async def _save(client: object, workflow_id: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (HERE / f"{workflow_id}.json").write_text(history.to_json())
    print(f"recorded {workflow_id}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main(os.environ.get("HISTORY_FORMAT", "v1")))
