"""Job fan-out: a CrowdCompute job of no-op tasks vs a hand-written Temporal fan-out.

Both run on one dev server and one worker in the same process. The baseline is
what one would write by hand: a parent workflow keeping a sliding window of
child workflows of 1,000 activities each in flight (as many as a CrowdCompute
job keeps: ``DEFAULT_WINDOW``), every activity returning its input in the
worker's event loop. Ours runs every task in a task process (one per core, kept
warm between tasks), as a real worker does.

A small warm-up job of each kind runs first (the first job on a fresh server
and worker pays for start-up), then the timed jobs alternate — baseline, ours,
and with ``--quick`` ours, baseline again — so load from other processes on the
machine falls on both alike. The ratio is of the summed wall times.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from bench import register
from workflows.models import DEFAULT_WINDOW

CHUNK = 1000
WARMUP = 200
# Activity slots of the shared worker (the baseline's in-loop activities need many).
SLOTS = 200
# ``python -m bench fanout --tasks N`` sets this (default: 10,000; 2,000 quick).
TASKS: int | None = None


def noop(x: Any) -> Any:
    return x


@activity.defn(name="bench_noop")
async def bench_noop(x: str) -> str:
    return x


@workflow.defn(name="BenchChunk")
class BenchChunk:
    @workflow.run
    async def run(self, items: list[str]) -> list[str]:
        return list(
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        bench_noop, x, activity_id=str(i), start_to_close_timeout=timedelta(minutes=5)
                    )
                    for i, x in enumerate(items)
                )
            )
        )


@workflow.defn(name="BenchFanout")
class BenchFanout:
    @workflow.run
    async def run(self, items: list[str]) -> list[str]:
        wid = workflow.info().workflow_id
        parts: dict[int, list[str]] = {}
        flying: list[asyncio.Task[None]] = []

        async def chunk(i: int) -> None:
            parts[i] = await workflow.execute_child_workflow(
                BenchChunk.run, items[i : i + CHUNK], id=f"{wid}-{i}"
            )

        for i in range(0, len(items), CHUNK):
            if len(flying) >= DEFAULT_WINDOW:
                done, flying = await workflow.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            flying.append(asyncio.create_task(chunk(i)))
        await asyncio.gather(*flying)
        return [r for i in sorted(parts) for r in parts[i]]


async def _baseline(client: Client, n: int) -> None:
    from sdk._codec import encode_value

    payload = [encode_value(i) for i in range(n)]
    wid = f"baseline-{uuid.uuid4().hex[:8]}"
    await client.execute_workflow(BenchFanout.run, payload, id=wid, task_queue="bench")


async def _ours(n: int) -> None:
    import sdk

    results = await sdk.map(noop, range(n))
    assert results == list(range(n))


@register("fanout")
async def run(quick: bool) -> dict[str, Any]:
    import sdk
    from activities import TaskActivities
    from activities.job_items import JobItemActivities
    from sdk._job_items import build_job_item_store
    from worker_app.dev import local_environment
    from worker_app.settings import Settings
    from worker_app.worker import task_runtime
    from workflows import WORKFLOWS, control_queue

    n = TASKS or (2000 if quick else 10_000)
    order = ["baseline", "crowdcompute"]
    if quick:
        order = [*order, *reversed(order)]
    env = await local_environment()
    times: dict[str, float] = {"baseline": 0.0, "crowdcompute": 0.0}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            address = env.client.service_client.config.target_host
            settings = Settings(temporal_address=address, task_queue="bench", state_dir=Path(tmp))
            conn = await sdk.connect(settings=settings)
            acts = TaskActivities(task_runtime(settings))
            # One worker of the task queue, so both fan-outs get the same pollers and
            # slots; ours also schedules its bookkeeping on the control queue.
            worker = Worker(
                conn.client,
                task_queue="bench",
                workflows=[*WORKFLOWS, BenchFanout, BenchChunk],
                activities=[acts.run_task, bench_noop],
                max_concurrent_activities=SLOTS,
            )
            control = Worker(
                conn.client, task_queue=control_queue("bench"),
                activities=[*acts.bookkeeping(),
                            *JobItemActivities(build_job_item_store(settings)).activities()])
            jobs = {"baseline": lambda k: _baseline(conn.client, k), "crowdcompute": _ours}
            async with worker, control:
                for job in jobs.values():
                    await job(WARMUP)
                for name in order:
                    t0 = time.monotonic()
                    await jobs[name](n)
                    times[name] += time.monotonic() - t0
            await acts.close()
    finally:
        await env.shutdown()
    rounds = len(order) // 2
    ours, baseline = times["crowdcompute"] / rounds, times["baseline"] / rounds
    ratio = ours / baseline
    load = os.getloadavg()[0]
    print(
        f"{n} no-op tasks: crowdcompute {ours:.1f}s, hand-written fan-out {baseline:.1f}s, "
        f"ratio {ratio:.2f} (mean of {rounds} round(s); load average {load:.1f}; "
        f"{acts.pool.size} task processes)"
    )
    return {
        "tasks": n,
        "rounds": rounds,
        "crowdcompute_s": round(ours, 2),
        "baseline_s": round(baseline, 2),
        "ratio": round(ratio, 3),
        "load_average": round(load, 2),
    }


@register("submit")
async def run_submit(quick: bool) -> dict[str, Any]:
    """Submit 1,000,000 small items (100,000 with --quick): the submit call's
    wall time, then the time until the first task completed; the job is then
    cancelled."""
    import sdk
    from worker_app.dev import local_environment
    from worker_app.settings import Settings
    from worker_app.worker import running_worker

    n = TASKS or (100_000 if quick else 1_000_000)
    env = await local_environment()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            address = env.client.service_client.config.target_host
            settings = Settings(temporal_address=address, task_queue="bench", state_dir=Path(tmp))
            conn = await sdk.connect(settings=settings)
            async with running_worker(settings, conn.client):
                t0 = time.monotonic()
                job = await sdk.submit(noop, range(n))
                submitted = time.monotonic() - t0
                while (await job.progress()).counts.get("completed", 0) == 0:
                    await asyncio.sleep(0.2)
                first = time.monotonic() - t0 - submitted
                await job.cancel()
    finally:
        await env.shutdown()
    load = os.getloadavg()[0]
    print(f"{n} items: submit {submitted:.1f}s, first task done {first:.1f}s later "
          f"(load average {load:.1f})")
    return {"items": n, "submit_s": round(submitted, 2), "first_task_after_s": round(first, 2),
            "load_average": round(load, 2)}


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


async def _timed(call: Any) -> float:
    t0 = time.monotonic()
    await call
    return time.monotonic() - t0


@register("progress")
async def run_progress(quick: bool) -> dict[str, Any]:
    """``JobHandle.progress()`` of a 100,000-task job (20,000 with --quick) whose
    tasks sleep, from the submit on: while the first batches start (the first
    20 s) and once every task process runs a task, then a page of one batch's
    tasks. The baseline, measured alongside each call, is a plain ``describe``
    of the job's workflow: one server round trip."""
    import sdk
    from worker_app.dev import local_environment
    from worker_app.settings import Settings
    from worker_app.worker import running_worker

    n = TASKS or (20_000 if quick else 100_000)
    env = await local_environment()
    ours: dict[str, list[float]] = {"starting": [], "steady": [], "page": []}
    base: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            address = env.client.service_client.config.target_host
            settings = Settings(temporal_address=address, task_queue="bench", state_dir=Path(tmp))
            conn = await sdk.connect(settings=settings)
            async with running_worker(settings, conn.client):
                job = await sdk.submit(sleep_for, [600.0] * n)
                handle = conn.client.get_workflow_handle(job.job_id)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 20:
                    ours["starting"].append(await _timed(job.progress()))
                    base.append(await _timed(handle.describe()))
                    await asyncio.sleep(0.5)
                for _ in range(10):
                    ours["steady"].append(await _timed(job.progress()))
                    base.append(await _timed(handle.describe()))
                for k in range(3):
                    ours["page"].append(await _timed(job.progress(batch=k)))
                await job.cancel()
    finally:
        await env.shutdown()
    load = os.getloadavg()[0]
    worst = {k: round(max(v), 3) for k, v in ours.items()}
    base_worst = max(base)
    print(f"progress() of a {n}-task job: worst {worst['starting']:.2f}s while starting, "
          f"{worst['steady']:.2f}s steady, {worst['page']:.2f}s for a page; describe "
          f"worst {base_worst:.2f}s (load average {load:.1f}; goal <= 2 s)")
    return {"tasks": n, "worst_s": worst,
            "median_s": {k: round(sorted(v)[len(v) // 2], 3) for k, v in ours.items()},
            "describe_worst_s": round(base_worst, 3),
            "worst_vs_describe": round(max(worst.values()) / base_worst, 2),
            "load_average": round(load, 2)}
