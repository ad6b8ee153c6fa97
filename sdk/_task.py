"""The in-task API: ``TaskContext`` and the context variable behind ``current_task()``.

``restore()`` and ``checkpoint()`` delegate to a :class:`CheckpointSession`.
The default one does nothing (``restore`` → None, ``checkpoint`` → False); the
checkpointing layer supplies a real session via ``TaskActivities(checkpoints=…)``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class NotInTaskError(RuntimeError):
    """``current_task()`` was called outside a running task."""


class CheckpointSession:
    """Checkpoint hooks of one task attempt. Subclass to implement checkpointing.

    Call order: ``restore()`` at most once early in the task, ``checkpoint()``
    any number of times, ``heartbeat_details()`` from the heartbeat loop (any
    time, another thread), then ``close()`` once when the attempt ends.
    """

    def restore(self) -> Any | None:
        """The newest committed state of the task, or None to start fresh."""
        return None

    def checkpoint(self, state: Any, progress_percent: float | None = None, *,
                   rng: bool = True) -> bool:
        """Capture ``state`` if a checkpoint is due; True when it captured."""
        return False

    def checkpoint_due(self) -> bool:
        """True when the next ``checkpoint()`` call would capture."""
        return False

    def checkpoint_files(self, path: str) -> None:
        """Include the files of directory ``path`` in every later checkpoint."""

    def restore_files(self) -> str | None:
        """The directory holding the restored files, or None."""
        return None

    def heartbeat_details(self) -> dict[str, Any]:
        """Extra JSON-safe fields for the heartbeat (e.g. the last committed ref)."""
        return {}

    async def close(self, *, succeeded: bool) -> None:
        """The attempt ended; ``succeeded`` is False on failure or cancellation."""


@dataclass
class TaskContext:
    """What a running task knows about itself; returned by ``sdk.current_task()``."""

    job_id: str
    task_id: str
    index: int
    attempt: int
    session: CheckpointSession = field(default_factory=CheckpointSession)
    started_at: float = field(default_factory=time.time)
    progress_percent: float | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def restore(self) -> Any | None:
        """The state saved by an earlier attempt of this task, or None.

        The global RNG states captured with it are back in place when this returns.
        """
        return self.session.restore()

    def checkpoint(self, state: Any, progress_percent: float | None = None, *,
                   rng: bool = True) -> bool:
        """Offer ``state`` for checkpointing; cheap unless a checkpoint is due.

        Args:
            state: the task's state (nested dicts / lists of arrays, tensors and
                picklable values), or a zero-argument function returning it, called
                only when a checkpoint is due.
            progress_percent: shown in heartbeats, the REST API and ``status``.
            rng: also capture this process's global RNG states (Python, NumPy,
                torch CPU / CUDA, TensorFlow / Keras), put back by ``restore()``.

        Returns:
            True when the state was captured.
        """
        if progress_percent is not None:
            self.progress_percent = float(progress_percent)
        return self.session.checkpoint(state, progress_percent, rng=rng)

    def checkpoint_due(self) -> bool:
        """True when the next ``checkpoint()`` call would capture (a clock read)."""
        return self.session.checkpoint_due()

    def checkpoint_files(self, path: str | os.PathLike[str]) -> None:
        """Checkpoint the files of the directory ``path`` together with the state.

        From this call on, every checkpoint that ``checkpoint()`` captures also
        captures the directory's regular files (recursively; symbolic links are
        refused) as they are at that moment, and commits them with the state in
        one transaction: a retry gets the state and the files that go with it.
        Files are stored as content-addressed chunks, so chunks unchanged since
        the previous checkpoint cost nothing; files whose size and modification
        time did not change are not even read. Call it again to switch to
        another directory. Does nothing when the job does not checkpoint.

        Args:
            path: a directory the task writes (e.g. ``save_pretrained`` output).
        """
        self.session.checkpoint_files(os.fspath(path))

    def restore_files(self) -> str | None:
        """The directory holding the files restored with ``restore()``'s state, or None.

        None when this attempt restored nothing or the restored checkpoint has
        no files. The directory is this attempt's own (a fresh temporary
        directory, every file verified against its SHA-256 before it was
        written) and is removed when the task function returns: copy what must
        outlive the task, or pass it to ``checkpoint_files`` to keep checkpointing
        it.
        """
        return self.session.restore_files()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled; long synchronous loops may check it."""
        return self._cancelled.is_set()

    def heartbeat_details(self) -> dict[str, Any]:
        """Small JSON-safe dict sent with every heartbeat."""
        details: dict[str, Any] = {"task_id": self.task_id, "attempt": self.attempt}
        if self.progress_percent is not None:
            details["progress_percent"] = self.progress_percent
        details.update(self.session.heartbeat_details())
        return details


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "crowdcompute_task", default=None
)


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine."""
    ctx = _current.get()
    if ctx is None:
        raise NotInTaskError(
            "current_task() is only available inside a function run by a CrowdCompute "
            "job (sdk.map / sdk.submit) on a worker"
        )
    return ctx


def bind(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    """Make ``ctx`` the current task (used by ``run_task``)."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
