"""SDK errors.

    RuntimeError
    ├── JobFailed        a task failed after its retries (message names it)
    └── JobCancelled     the job was cancelled or terminated
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


class JobNotFound(LookupError):
    """No job of that id exists (in this namespace)."""


__all__ = ["JobCancelled", "JobFailed", "JobNotFound", "TemporalUnreachable"]
