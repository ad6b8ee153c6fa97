"""SDK errors.

    RuntimeError
    ├── JobFailed        a task failed after its retries (message names it)
    └── JobCancelled     the job was cancelled or terminated
    ConnectionError
    └── TemporalUnreachable   (worker_app.temporal) nothing answered in time
    ValueError                bad input at the SDK edge (job id, function, options)
"""

from __future__ import annotations

from worker_app.temporal import TemporalUnreachable


class JobFailed(RuntimeError):
    """The job failed; the message names the task, exception type and message."""


class JobCancelled(RuntimeError):
    """The job was cancelled or terminated before it completed."""


__all__ = ["JobCancelled", "JobFailed", "TemporalUnreachable"]
