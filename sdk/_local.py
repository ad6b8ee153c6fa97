"""``run_local``: run a task function in this process with a real task context, for unit tests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdk._task import CheckpointSession

__all__ = ["SimulatedInterruption", "run_local"]


class SimulatedInterruption(BaseException):
    """Raised inside a task run by ``run_local`` to simulate its worker dying.

    A BaseException, so that the task's own ``except Exception`` handlers do not
    swallow it (a killed worker does not run them either).
    """


def run_local(
    fn: Callable[..., Any],
    item: Any,
    *,
    checkpoint_interval: float | None = None,
    state_dir: str | Path | None = None,
    interrupt_after_checkpoints: int | None = None,
    max_checkpoint_age: float | None = None,
    job_id: str = "local-job",
    index: int = 0,
) -> Any:
    """Run ``fn(item)`` here, as a worker would run one task, and return its result.

    ``current_task()`` works inside; checkpoints go to a real catalog and blob
    directory (SQLite and files in ``state_dir``, a temporary directory by
    default, removed afterwards). Each due checkpoint is committed before the
    function continues, so runs are deterministic. ``checkpoint_interval=0``
    makes every ``checkpoint()`` call due.

    With ``interrupt_after_checkpoints=k`` the first attempt is stopped (as if
    its worker died) at the first ``checkpoint()`` call after ``k`` commits, and
    a second attempt resumes from the newest checkpoint; its result is returned.
    Compare it with an uninterrupted ``run_local`` to test that resuming is exact.
    """
    if checkpoint_interval is not None and checkpoint_interval < 0:
        raise ValueError("checkpoint_interval must be >= 0 seconds or None")
    if interrupt_after_checkpoints is not None:
        if checkpoint_interval is None:
            raise ValueError("interrupt_after_checkpoints needs a checkpoint_interval")
        if interrupt_after_checkpoints < 1:
            raise ValueError("interrupt_after_checkpoints must be >= 1")
    if state_dir is not None:
        return _run(fn, item, Path(state_dir), checkpoint_interval, interrupt_after_checkpoints,
                    max_checkpoint_age, job_id, index)
    with tempfile.TemporaryDirectory(prefix="crowdcompute-local-") as tmp:
        return _run(fn, item, Path(tmp), checkpoint_interval, interrupt_after_checkpoints,
                    max_checkpoint_age, job_id, index)


def _run(fn: Callable[..., Any], item: Any, state: Path, interval: float | None,
         interrupt: int | None, max_age: float | None, job_id: str, index: int) -> Any:
    from checkpoint import CheckpointManager
    from workflows.models import task_id_for, validate_job_id

    validate_job_id(job_id)
    state.mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager.from_urls(f"sqlite:///{state / 'crowdcompute.db'}",
                                          (state / "blobs").as_uri())
    try:
        task_id = task_id_for(job_id, index)
        if interrupt is not None:
            try:
                _attempt(fn, item, manager, job_id, task_id, index, 1, interval, max_age, interrupt)
            except SimulatedInterruption:
                pass
            else:
                raise RuntimeError(f"the task finished before {interrupt} checkpoint(s) were "
                                   "committed; nothing was interrupted")
            return _attempt(fn, item, manager, job_id, task_id, index, 2, interval, max_age, None)
        return _attempt(fn, item, manager, job_id, task_id, index, 1, interval, max_age, None)
    finally:
        manager.close()


def _attempt(fn: Callable[..., Any], item: Any, manager: Any, job_id: str, task_id: str,
             index: int, attempt: int, interval: float | None, max_age: float | None,
             interrupt: int | None) -> Any:
    import asyncio

    from activities.checkpointing import TaskCheckpointSession
    from sdk._task import TaskContext, bind, unbind

    ctx = TaskContext(job_id, task_id, index, attempt)
    if interval is not None:
        session = TaskCheckpointSession(manager, ctx, interval=interval, max_age=max_age,
                                        memory_budget=None)
        session.start()
        ctx.session = _LocalSession(session, interrupt)
    else:
        ctx.session = CheckpointSession()
    token = bind(ctx)
    succeeded = False
    try:
        result = fn(item)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        succeeded = True
        return result
    finally:
        unbind(token)
        asyncio.run(ctx.session.close(succeeded=succeeded))


class _LocalSession(CheckpointSession):
    """A task's checkpoint session whose saves commit before ``checkpoint()`` returns."""

    def __init__(self, inner: Any, interrupt: int | None) -> None:
        self.inner = inner
        self.interrupt = interrupt
        self.commits = 0

    def restore(self) -> Any:
        return self.inner.restore()

    def checkpoint(self, *args: Any, **kwargs: Any) -> bool:
        if self.interrupt is not None and self.commits >= self.interrupt:
            raise SimulatedInterruption(f"interrupted after {self.commits} checkpoint(s)")
        taken = bool(self.inner.checkpoint(*args, **kwargs))
        if taken and self.inner.flush() is not None:
            self.commits += 1
        return taken

    def checkpoint_due(self) -> bool:
        # Explicit: the base class defines it, so ``__getattr__`` would never forward it.
        return bool(self.inner.checkpoint_due())

    def checkpoint_files(self, path: str) -> None:
        self.inner.checkpoint_files(path)

    def restore_files(self) -> str | None:
        return self.inner.restore_files()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:   # the rest of the session API
        return getattr(self.inner, name)

    def heartbeat_details(self) -> dict[str, Any]:
        return dict(self.inner.heartbeat_details())

    async def close(self, *, succeeded: bool) -> None:
        await self.inner.close(succeeded=succeeded)
