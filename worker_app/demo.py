"""``crowdcompute demo``: a checkpointed training job that survives a worker's death.

The demo starts what is missing of the embedded stack (a Temporal dev server)
and two workers on a task queue of its own, submits a job that trains several
small models with ``checkpoint_interval=1``, SIGKILLs the worker running the
most tasks mid-run, starts a replacement, and prints each task's result with
how much work its checkpoint saved. It stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from worker_app.dev import DevStack, port_in_use, split_address
from worker_app.settings import Settings

DEMO_ITEMS = list(range(4))
KILL_AT_PERCENT = 40.0


def run_demo(settings: Settings) -> int:
    """Start what is missing, run the demo job, print results, stop what it started."""
    settings = settings.model_copy(update={"task_queue": f"crowdcompute-demo-{os.getpid()}"})
    host, port = split_address(settings.temporal_address)
    stack = DevStack(settings, port=port, ui_port=port + 1000)
    try:
        if port_in_use(port, "127.0.0.1" if host == "localhost" else host):
            print(f"using the Temporal server at {settings.temporal_address}")
        else:
            print(f"starting Temporal at {stack.address} (UI http://localhost:{stack.ui_port}) …")
            stack.start_server()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = settings.state_dir / "demo-workers.log"
        print(f"worker logs: {log_path}")
        for _ in range(2):
            stack.start_worker(log_path)
        return asyncio.run(_run(settings, stack, log_path))
    finally:
        stack.stop()


async def _run(settings: Settings, stack: DevStack, log_path: Path) -> int:
    import sdk
    from worker_app.demo_tasks import STEPS, train

    conn = await sdk.connect(settings=settings)
    job_id = f"demo-{int(time.time())}"
    print(f"job {job_id}: training {len(DEMO_ITEMS)} models, {STEPS} steps each, "
          "checkpoint every 1 s, on 2 workers", flush=True)
    start = time.monotonic()
    job = await sdk.submit(train, DEMO_ITEMS, checkpoint_interval=1.0, heartbeat_timeout=3.0,
                           max_attempts=5, job_id=job_id)
    handle = conn.client.get_workflow_handle(job_id)
    victim = await _busiest_worker(handle, stack)
    if victim is not None:
        pid, tasks = victim
        os.kill(pid, signal.SIGKILL)
        print(f"killed worker pid {pid} (SIGKILL) while it ran task(s) {', '.join(tasks)}; "
              "Temporal retries them once their 3 s heartbeat timeout passes; starting a "
              "replacement worker …", flush=True)
        stack.start_worker(log_path)
    results = await job.result()
    print(f"done in {time.monotonic() - start:.1f}s")
    saved = 0
    for r in results:
        line = (f"  model {r['seed']}: loss {r['loss']:.6f}, max weight error "
                f"{r['weight_error']:.4f}, attempt {r['attempt']}")
        if r["resumed_from"] is not None:
            saved += r["resumed_from"]
            line += (f" — resumed from its checkpoint at step {r['resumed_from']}/{r['steps']}, "
                     f"{r['resumed_from']} steps not recomputed")
        print(line)
    total = len(results) * STEPS
    print(f"checkpoints saved {saved} of {total} steps ({100.0 * saved / total:.0f} %) "
          "from being recomputed; checkpoint data was deleted when each task completed.")
    return 0


async def _busiest_worker(handle: Any, stack: DevStack,
                          timeout: float = 60.0) -> tuple[int, list[str]] | None:
    """Once the job is ~40 % done, the pid of our worker running the most tasks."""
    ours = {p.pid for p in stack.workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = await handle.describe()
        by_pid: dict[int, list[str]] = {}
        progress = []
        for act in desc.raw_description.pending_activities:
            pid_text = act.last_worker_identity.split("@", 1)[0]
            if pid_text.isdigit() and int(pid_text) in ours:
                by_pid.setdefault(int(pid_text), []).append(act.activity_id)
            for p in act.heartbeat_details.payloads:
                progress.append(_progress_of(p.data))
        if by_pid and progress and max(progress) >= KILL_AT_PERCENT:
            pid = max(by_pid, key=lambda k: len(by_pid[k]))
            return pid, sorted(by_pid[pid])
        await asyncio.sleep(0.3)
    return None


def _progress_of(data: bytes) -> float:
    import json

    try:
        return float(json.loads(data).get("progress_percent") or 0.0)
    except (ValueError, AttributeError, TypeError):
        return 0.0
