"""``TaskActivities``: the ``run_task`` activity and the cleanup pair.

``run_task`` runs the user function in a task process of its own (``_pool`` /
``_child``); this side owns Temporal's: heartbeats, cancellation, the final
checkpoint on shutdown, the result. Dependencies come in through the
constructor: a :class:`TaskRuntime` (what they need of the worker's configuration) and, optionally, a :class:`CheckpointProvider` that
deletes a task's or a job's checkpoint data and observes checkpoint events.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from activities._ipc import InitSpec, RunSpec
from activities._pool import Assignment, AttemptEvents, ProcessPool
from activities._runtime import TaskRuntime
from activities.checkpointing import CheckpointObserver, previous_heartbeat
from workflows.models import (
    CleanupJobInput,
    CleanupTaskInput,
    RunTaskInput,
    TaskStarted,
    model_from_json,
    task_id_for,
)
from workflows.payloads import is_given

log = logging.getLogger(__name__)

# A task that finishes sooner than this never signals "running": short tasks
# cost no extra history events, long ones show up as running in the query.
START_SIGNAL_DELAY = 1.0
# ``run_task``'s item when a first-format workflow passes none.
NO_ITEM = RawValue(Payload())


class CheckpointProvider(Protocol):
    """What ``TaskActivities`` needs from the checkpointing layer."""

    observer: CheckpointObserver | None

    async def cleanup_task(self, job_id: str, task_id: str, status: str) -> None: ...

    async def cleanup_job(self, job_id: str, outcome: str, *, forget: bool) -> None: ...


@dataclass(eq=False)
class _Attempt:
    """A running attempt as the worker sees it."""

    spec: RunSpec
    details: dict[str, Any]
    final: asyncio.Future[bool] | None = None
    send_final: Callable[[], object] = field(default=lambda: None)
    beating: bool = False  # the heartbeat loop runs

    def update(self, details: dict[str, Any]) -> None:
        """New details from the task process; a new checkpoint is heartbeated at once.

        Temporal still sends at most one heartbeat per throttle interval (the worker
        sets it to the heartbeat interval), so this only cuts how long the server's
        details trail the newest commit, not how many heartbeats it gets.
        """
        new_seq = _seq(details) != _seq(self.details)
        self.details = details
        if new_seq and self.beating:
            activity.heartbeat(details)

    @property
    def checkpointed(self) -> bool:
        return (self.spec.checkpoint_interval is not None
                or self.spec.checkpoint_every_steps is not None)


def _seq(details: dict[str, Any]) -> Any:
    ckpt = details.get("checkpoint")
    return ckpt.get("seq") if isinstance(ckpt, dict) else None


class TaskActivities:
    """Activities of a worker; register ``activities()`` with the Temporal worker.

    Call ``close()`` when the worker stopped: it kills the warm task processes.
    """

    def __init__(self, settings: TaskRuntime, checkpoints: CheckpointProvider | None = None,
                 *, max_tasks: int | None = None) -> None:
        self.settings = settings
        self.checkpoints = checkpoints
        self.pool = ProcessPool(max_tasks or settings.max_tasks, self._init_spec)
        self._running: set[_Attempt] = set()
        self._stop_grace = settings.task_stop_grace_seconds

    def bookkeeping(self) -> list[Callable[..., Any]]:
        """The activities besides ``run_task`` (a worker's control queue runs them)."""
        return [self.cleanup_task, self.cleanup_job]

    def _init_spec(self) -> InitSpec:
        return InitSpec(sys_path=list(sys.path), settings=self.settings.to_dict(),
                        memory_limit=self.settings.task_memory_limit)

    @activity.defn(name="run_task")
    async def run_task(self, arg: RunTaskInput, item: RawValue = NO_ITEM) -> RawValue | str:
        """Run the user function on one item in a task process; return its result.

        ``item`` is the item's payload and the result is one too; a task of a
        first-format job has neither (``arg.payload`` and the result are base64
        pickles).
        """
        if not is_given(item):
            if isinstance(arg, dict):
                # One argument where the definition has two: Temporal then decodes it
                # without type hints, as the JSON object it is.
                arg = model_from_json(RunTaskInput, arg)
            return str(await self._run_task(arg, None))
        result = await self._run_task(arg, item.payload.SerializeToString())
        assert isinstance(result, bytes)  # the task process answers in the item's format
        return RawValue(Payload.FromString(result))

    async def _run_task(self, arg: RunTaskInput, item: bytes | None) -> str | bytes:
        info = activity.info()
        hinted_seq, hinted_catalog = previous_heartbeat(info.heartbeat_details)
        spec = RunSpec(
            job_id=arg.job_id, task_id=task_id_for(arg.job_id, arg.index), index=arg.index,
            attempt=info.attempt, fn=arg.fn, payload=arg.payload, item=item,
            checkpoint_interval=arg.checkpoint_interval,
            checkpoint_every_steps=arg.checkpoint_every_steps,
            max_checkpoint_age=arg.max_checkpoint_age,
            hinted_seq=hinted_seq, hinted_catalog=hinted_catalog, keep=arg.keep,
            warm_start_from=arg.warm_start_from, fresh=_starts_over(info))
        # Until the task process reports its own, this attempt's heartbeats carry the last
        # one's checkpoint and catalog: an attempt that fails before it checkpoints (a
        # catalog mismatch, a crash) must not erase what the next one is checked against.
        details = info.heartbeat_details
        previous = details[0] if details and isinstance(details[0], dict) else {}
        carried = {k: previous[k] for k in ("checkpoint", "catalog_id") if k in previous}
        attempt = _Attempt(spec, {"task_id": spec.task_id, "attempt": spec.attempt, **carried})
        loop = asyncio.get_running_loop()
        interval = self.settings.heartbeat_interval
        # No heartbeat task at once: a task shorter than the first delay costs neither
        # an RPC nor an asyncio task (most tasks of a big job are that short). A task
        # waiting for a free task process heartbeats, but is not reported as running.
        beat: list[asyncio.Task[None]] = []

        def heartbeats() -> None:
            if not beat:
                beat.append(loop.create_task(self._heartbeat_loop(attempt)))

        def running_a_while() -> None:
            heartbeats()
            beat.append(loop.create_task(self._signal_started(spec)))

        timer = loop.call_later(interval, heartbeats)

        def dispatched(assignment: Assignment) -> None:
            # In the pool's read callback, as a process takes the attempt.
            nonlocal timer
            timer.cancel()
            timer = loop.call_later(min(START_SIGNAL_DELAY, interval), running_a_while)
            attempt.send_final = lambda: assignment.send("final")
            self._running.add(attempt)

        try:
            return await self._run_in(
                self.pool.run(spec, self._events(attempt), lambda: self._stop_grace,
                              on_dispatch=dispatched), attempt)
        finally:
            self._running.discard(attempt)
            if attempt.final is not None and not attempt.final.done():
                attempt.final.set_result(True)  # the attempt ended: nothing left to save
            timer.cancel()
            for task in beat:
                task.cancel()

    async def _run_in(self, running: Coroutine[Any, Any, str | bytes],
                      attempt: _Attempt) -> str | bytes:
        """Await the attempt in its task process; a pause or reset first saves a checkpoint.

        Temporal delivers ``temporal activity pause`` / ``reset`` (and the UI's) as a
        cancellation at the next heartbeat. A checkpointed task then takes a final
        checkpoint before its process is stopped, so unpausing (or the reset's
        new attempt) resumes from where it paused, not from the last interval.
        """
        run = asyncio.ensure_future(running)
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            await self._final_on_pause(attempt, run)
            run.cancel()
            await asyncio.wait({run})
            if not run.cancelled():
                run.exception()  # retrieved: the attempt is being cancelled anyway
            raise

    async def _final_on_pause(self, attempt: _Attempt, run: asyncio.Future[Any]) -> None:
        why = activity.cancellation_details()
        if why is None or not (why.paused or why.reset) or not attempt.checkpointed or run.done():
            return
        loop = asyncio.get_running_loop()
        attempt.final = final = loop.create_future()
        attempt.send_final()
        done, _ = await asyncio.wait({final}, timeout=self.settings.shutdown_grace_seconds)
        saved = bool(done) and final.result()
        log.info("task %s attempt %d %s: final checkpoint %s", attempt.spec.task_id,
                 attempt.spec.attempt, "paused" if why.paused else "reset",
                 "committed" if saved else "not taken in time")

    def _events(self, attempt: _Attempt) -> AttemptEvents:
        observer = self.checkpoints.observer if self.checkpoints is not None else None

        def observe(method: str, args: tuple[Any, ...]) -> None:
            if observer is not None:
                getattr(observer, method)(*args)

        def final_done(ok: bool) -> None:
            if attempt.final is not None and not attempt.final.done():
                attempt.final.set_result(ok)

        return AttemptEvents(beat=attempt.update, observe=observe,
                             final_done=final_done)

    async def _heartbeat_loop(self, attempt: _Attempt) -> None:
        """Heartbeat on a fixed schedule whatever the user code does (from the first delay on)."""
        interval = self.settings.heartbeat_interval
        attempt.beating = True
        while True:
            activity.heartbeat(attempt.details)
            await asyncio.sleep(interval)

    async def _signal_started(self, spec: RunSpec) -> None:
        info = activity.info()
        if info.workflow_id is None:  # not started by a workflow: nobody to tell
            return
        try:
            handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
            await handle.signal("task_started", TaskStarted(index=spec.index, attempt=spec.attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # progress reporting must never fail a task
            log.warning("could not report task %s as running: %s", spec.task_id, exc)

    async def final_checkpoints(self, timeout: float) -> int:
        """Ask every running checkpointed task for a final checkpoint; wait up to ``timeout`` s.

        Returns how many committed it (or finished) in time.
        """
        loop = asyncio.get_running_loop()
        attempts = [a for a in self._running if a.checkpointed]
        for a in attempts:
            a.final = loop.create_future()
            a.send_final()
        done = 0
        if attempts:
            finished, _ = await asyncio.wait({a.final for a in attempts if a.final}, timeout=timeout)
            done = sum(1 for f in finished if f.result())
        log.info("CheckpointHandler: final checkpoints: %d of %d tasks in time", done,
                 len(attempts))
        # The worker is going: what runs now is cancelled and retried from the final
        # checkpoint, so its processes are killed at once rather than after a grace.
        self._stop_grace = 0.0
        return done

    async def close(self) -> None:
        """Kill the task processes (running attempts are retried elsewhere)."""
        await self.pool.close()

    @activity.defn(name="cleanup_task")
    async def cleanup_task(self, arg: CleanupTaskInput) -> None:
        """Delete the checkpoint data of a task that ended; record its status."""
        if self.checkpoints is not None:
            await self.checkpoints.cleanup_task(arg.job_id, arg.task_id, arg.status)

    @activity.defn(name="cleanup_job")
    async def cleanup_job(self, arg: CleanupJobInput) -> None:
        """Delete whatever checkpoint data remains for a finished job (or, with
        ``forget``, every row an earlier job of the id left)."""
        if self.checkpoints is not None:
            await self.checkpoints.cleanup_job(arg.job_id, arg.outcome, forget=arg.forget)


def _starts_over(info: activity.Info) -> bool:
    """True for an attempt told to start over rather than resume.

    Attempt 1 without heartbeat details: either the task's first attempt (it has
    no checkpoints, so nothing changes) or one after ``temporal activity reset
    --clear-heartbeat-details`` (or a workflow reset), whose checkpoints are then
    deleted. A plain ``reset`` keeps the details and resumes: the attempt count
    starts over, the task's progress does not. Every retry has attempt > 1.
    """
    return info.attempt == 1 and not info.heartbeat_details


__all__ = ["CheckpointProvider", "TaskActivities"]
