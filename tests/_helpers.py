"""Helpers shared by the test modules (import them from here, not from conftest:
several conftest modules exist and only one can be imported by that name)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client, WorkflowHistory

from worker_app.settings import Settings

TESTS_DIR = Path(__file__).resolve().parent
# Task functions live here (module `tasks`, …) so workers import them by path;
# never put tests/ itself on a worker's path: its sdk/ and workflows/ folders
# would shadow the real packages.
TASK_MODULES = TESTS_DIR / "task_modules"


class WorkerProcess:
    """A running `crowdcompute worker` subprocess."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)




def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CROWDCOMPUTE_* settings, the task modules
    importable, plus ``extra`` (full variable names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDCOMPUTE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TASK_MODULES), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """Environment for a worker process: ``settings`` plus ``overrides`` (full names)."""
    return clean_env(**{**settings.child_env(), **overrides})




def threading_drain(proc: subprocess.Popen[str]) -> None:
    import threading

    def drain() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()




async def wait_for(predicate: Callable[[], object], timeout: float = 30, every: float = 0.2) -> None:
    """Poll an (async or sync) predicate until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)




async def job_histories(client: Client, job_id: str) -> dict[str, object]:
    """Histories of a job's workflow and every child workflow it started, by id."""
    out: dict[str, object] = {}
    todo = [job_id]
    while todo:
        wid = todo.pop()
        history = await client.get_workflow_handle(wid).fetch_history()
        out[wid] = history
        for event in history.events:
            if event.HasField("child_workflow_execution_started_event_attributes"):
                attrs = event.child_workflow_execution_started_event_attributes
                todo.append(attrs.workflow_execution.workflow_id)
    return out


async def job_runs(client: Client, job_id: str) -> list[WorkflowHistory]:
    """Every run of ``job_id``, first to last (following continue-as-new back)."""
    runs: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(job_id, run_id=run_id).fetch_history()
        runs.insert(0, history)
        start = history.events[0].workflow_execution_started_event_attributes
        run_id = start.continued_execution_run_id or None
        if run_id is None:
            return runs
