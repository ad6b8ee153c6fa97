"""SDK errors.

    RuntimeError
    ├── JobFailed        a task failed after its retries (message names it)
    ├── JobCancelled     the job was cancelled or terminated
    └── TaskFailed       in place of a failed task's result (``return_exceptions=True``)
    LookupError
    └── JobNotFound      get_job: no job of that id
    ConnectionError
    └── TemporalUnreachable   (sdk._temporal) nothing answered in time
    ValueError                bad input at the SDK edge (job id, function, options)
"""

from __future__ import annotations

from sdk._temporal import TemporalUnreachable


class JobFailed(RuntimeError):
    """The job failed; the message names the task, exception type and message."""


class JobCancelled(RuntimeError):
    """The job was cancelled or terminated before it completed."""


class TaskFailed(RuntimeError):
    """A task failed after its retries; with ``return_exceptions=True`` it is returned
    in the task's place in the results instead of failing the job.

    Attributes:
        type: the name of the exception the task function raised (or the failure's
            kind, e.g. a timeout).
        message: its message.
        attempts: how many attempts the task had.
        task_id: ``{job_id}:{index}``.
        index: the item's position in the input.
    """

    def __init__(self, type: str, message: str, attempts: int, task_id: str,  # noqa: A002
                 index: int) -> None:
        super().__init__(f"task {task_id} failed after {attempts} attempt(s): {type}: {message}")
        self.type = type
        self.message = message
        self.attempts = attempts
        self.task_id = task_id
        self.index = index

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, int, str, int]]:
        return TaskFailed, (self.type, self.message, self.attempts, self.task_id, self.index)


class JobNotFound(LookupError):
    """No job of that id exists (in this namespace)."""


__all__ = ["JobCancelled", "JobFailed", "JobNotFound", "TaskFailed", "TemporalUnreachable"]
