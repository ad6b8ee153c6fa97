"""CrowdCompute SDK: run a Python function over many inputs as a durable Temporal job.

    from sdk import connect, map, current_task
    await connect("localhost:7233")
    results = await map(train, items, checkpoint_interval=10.0)
"""

from sdk._connection import Connection, connect
from sdk._jobs import JobHandle, map, run_map, submit
from sdk._local import SimulatedInterruption, run_local
from sdk._lookup import JobInfo, get_job, list_jobs
from sdk._task import TaskContext, current_task
from sdk.errors import JobCancelled, JobFailed, JobNotFound, TaskFailed, TemporalUnreachable

__all__ = [
    "Connection",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobNotFound",
    "SimulatedInterruption",
    "TaskContext",
    "TaskFailed",
    "TemporalUnreachable",
    "connect",
    "current_task",
    "get_job",
    "list_jobs",
    "map",
    "run_local",
    "run_map",
    "submit",
]
