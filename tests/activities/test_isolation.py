"""One process per running task, end to end: a real dev server, in-process workers
(whose tasks run in child processes too) and real ``crowdcompute worker`` processes."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import tasks
from _helpers import clean_env

import sdk
from worker_app.settings import Settings
from worker_app.worker import running_worker

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def one_task_worker(settings: Settings, conn: sdk.Connection) -> Callable[[], Any]:
    """An in-process worker that runs one task at a time (so one warm process)."""

    def start() -> Any:
        return running_worker(settings.model_copy(update={"max_concurrent_tasks": 1}), conn.client)

    return start


@pytest.fixture
async def two_task_worker(settings: Settings, conn: sdk.Connection) -> AsyncIterator[None]:
    async with running_worker(settings.model_copy(update={"max_concurrent_tasks": 2}),
                              conn.client):
        yield


def fresh_process_reference(cfg: dict[str, Any]) -> dict[str, Any]:
    """``ckpt_tasks.reference_torch_dropout(cfg)`` computed in a new interpreter."""
    code = ("import pickle, sys, ckpt_tasks; "
            "sys.stdout.buffer.write(pickle.dumps(ckpt_tasks.reference_torch_dropout("
            f"{cfg!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                         timeout=120, check=True)
    return pickle.loads(out.stdout)  # type: ignore[no-any-return]


def same_training(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return got["losses"] == want["losses"] and all(
        got[tree].keys() == want[tree].keys()
        and all(got[tree][k].numpy().tobytes() == v.numpy().tobytes() for k, v in want[tree].items())
        for tree in ("model", "ema"))


async def test_same_seed_torch_tasks_on_one_worker_match_a_fresh_process(
        two_task_worker: None, tmp_path: Path) -> None:
    import ckpt_tasks

    cfg = {"seed": 7, "steps": 25, "step_seconds": 0.01, "log": str(tmp_path / "steps.log")}
    want = fresh_process_reference(cfg)
    first = await sdk.map(ckpt_tasks.train_torch_dropout, [cfg, cfg])  # side by side
    again = await sdk.map(ckpt_tasks.train_torch_dropout, [cfg, cfg])  # in the warm processes
    for got in (*first, *again):
        assert same_training(got, want)


async def test_a_warm_process_is_reset_between_tasks(
        one_task_worker: Callable[[], Any], tmp_path: Path) -> None:
    async with one_task_worker():
        seen = await sdk.map(tasks.process_state, [{"dir": str(tmp_path)}] * 3)
    assert len({s["pid"] for s in seen}) == 1  # the same process ran all three
    assert [s["leak"] for s in seen] == [None, None, None]
    assert [s["cwd"] for s in seen] == [seen[0]["cwd"]] * 3 != [str(tmp_path)] * 3
    assert [s["threads"] for s in seen] == [seen[0]["threads"]] * 3
    for gen in ("python", "numpy", "torch"):  # reseeded, not left at seed 0
        assert len({s[gen] for s in seen}) == 3, gen


async def test_segfault_fails_only_its_attempt(worker_process: Callable[..., Any],
                                               conn: sdk.Connection) -> None:
    worker = worker_process(CROWDCOMPUTE_MAX_CONCURRENT_TASKS="2")
    with pytest.raises(sdk.JobFailed) as info:
        await sdk.map(tasks.segfault, [5], max_attempts=1)
    msg = str(info.value)
    assert "TaskProcessDied" in msg and "signal 11 (SIGSEGV)" in msg
    assert "about to crash on item 5" in msg  # the last lines the process wrote
    beside = await sdk.submit(tasks.slow_pid, [4.0])
    job = await sdk.submit(tasks.segfault_on_first_attempt, [2], max_attempts=3)
    (retried,) = await job.result()
    (calm,) = await beside.result()
    assert retried == {"item": 2, "attempt": 2, "pid": worker.pid}
    assert calm["attempt"] == 1 and calm["pid"] == worker.pid  # its neighbour was unaffected
    assert worker.proc.poll() is None


async def test_a_death_after_a_task_ended_does_not_fail_the_next_one(
        one_task_worker: Callable[[], Any]) -> None:
    # One warm process at a time: as each task ends, the next is handed to its
    # process, and the process dies in the reset after the task (what the task left
    # crashes it) before the next one begins. That task must run in a new process on
    # its first attempt: with one attempt allowed, a failure fails the job.
    async with one_task_worker():
        ran = await sdk.map(tasks.die_after_returning, [0, 1, 2], max_attempts=1)
    assert [r["attempt"] for r in ran] == [1, 1, 1]
    assert len({r["pid"] for r in ran}) == 3, ran  # each process died after its task


async def test_os_exit_names_the_exit_code_and_the_retry_succeeds(
        worker_process: Callable[..., Any], conn: sdk.Connection) -> None:
    worker = worker_process()
    with pytest.raises(sdk.JobFailed) as info:
        await sdk.map(tasks.exit_on_first_attempt, [9], max_attempts=1)
    assert "exited with code 3" in str(info.value)
    assert "leaving with os._exit(3) on item 9" in str(info.value)
    assert await sdk.map(tasks.exit_on_first_attempt, [4], max_attempts=2) == [
        {"item": 4, "attempt": 2}]
    assert worker.proc.poll() is None


async def test_a_task_over_its_memory_limit_fails_its_attempt_not_the_worker(
        worker_process: Callable[..., Any], conn: sdk.Connection) -> None:
    worker = worker_process(CROWDCOMPUTE_TASK_MEMORY_LIMIT=str(3 << 30))
    with pytest.raises(sdk.JobFailed) as info:
        await sdk.map(tasks.allocate, [4 << 30], max_attempts=1)
    assert "MemoryError" in str(info.value)
    assert await sdk.map(tasks.allocate, [1 << 20]) == [1 << 20]
    assert worker.proc.poll() is None


@pytest.fixture
async def checkpointing_worker(settings: Settings, conn: sdk.Connection) -> AsyncIterator[None]:
    async with running_worker(settings, conn.client):
        yield


async def test_every_steps_builds_the_state_only_when_due(checkpointing_worker: None) -> None:
    # A pause between calls, so each checkpoint is persisted before the next is due.
    (got,) = await sdk.map(tasks.checkpoint_probe, [{"calls": 7, "sleep": 0.5}],
                           checkpoint_every_steps=3)
    assert got == {"due": [3, 6], "captured": [3, 6], "built": [3, 6]}


async def test_checkpoint_due_follows_the_interval(checkpointing_worker: None) -> None:
    (got,) = await sdk.map(tasks.checkpoint_probe, [{"calls": 4, "sleep": 0.6}],
                           checkpoint_interval=1.0)
    # Calls at ~0.6, 1.2, 1.8, 2.4 s: due at 1.2 (>= 1.0), then 1.2 s after that capture.
    assert got == {"due": [2, 4], "captured": [2, 4], "built": [2, 4]}


async def test_no_checkpointing_never_builds_the_state(checkpointing_worker: None) -> None:
    (got,) = await sdk.map(tasks.checkpoint_probe, [{"calls": 5}])
    assert got == {"due": [], "captured": [], "built": []}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
async def test_a_warm_process_does_not_grow_with_checkpointed_tasks(
        one_task_worker: Callable[[], Any]) -> None:
    """Each checkpointed task left two to three times its state behind in the warm
    process (buffers in reference cycles, the freed heap) until the reset between tasks
    collected and trimmed them."""
    from activities._child import RELEASE_GROWTH

    cfg = {"mb": 48, "checkpoints": 4}
    async with one_task_worker():
        seen = [(await sdk.map(tasks.checkpoint_big, [cfg], checkpoint_every_steps=1))[0]
                for _ in range(8)]
    assert len({s["pid"] for s in seen}) == 1  # one warm process ran all eight
    rss = [s["rss_mb_at_start"] for s in seen]
    # From the second task on the process has all it keeps (imports, the catalog, the
    # store). The reset releases memory once a task left the process RELEASE_GROWTH
    # above where the last release left it, so up to that much may stay; without the
    # release, the garbage of one or two tasks (a state or more each) stayed until the
    # collector happened to run (here: 212, 276, 341 MB at the starts of 32 MB tasks).
    assert max(rss[2:]) - rss[1] < (RELEASE_GROWTH >> 20) + cfg["mb"], rss


async def test_task_processes_tune_the_allocator_unless_the_worker_did(
        one_task_worker: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from activities._pool import MALLOC_TUNING

    async with one_task_worker():
        (tuned,) = await sdk.map(tasks.malloc_env, [0])
    assert tuned == MALLOC_TUNING
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4096")  # the worker's own setting wins
    async with one_task_worker():
        (own,) = await sdk.map(tasks.malloc_env, [0])
    assert own == {**MALLOC_TUNING, "MALLOC_TRIM_THRESHOLD_": "4096"}
