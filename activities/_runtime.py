"""``TaskRuntime``: what the activities need of a worker's configuration, injected.

The activities import no settings: the worker builds one of these from its own
(``worker_app.worker.task_runtime``), ``TaskActivities`` keeps it, and each task
process receives it (as a dict) before its first task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from checkpoint import CheckpointManager

__all__ = ["TaskRuntime"]


@dataclass(frozen=True)
class TaskRuntime:
    """Task processes, heartbeats, shutdown and the checkpoint catalog of one worker.

    Attributes:
        heartbeat_interval: seconds between heartbeats of a running task.
        max_tasks: tasks run at once, one process each.
        task_stop_grace_seconds: a stopped attempt is killed after this long.
        task_memory_limit: address-space limit of a task process (bytes), or None.
        shutdown_grace_seconds: on SIGTERM, how long final checkpoints may take.
        checkpoint_memory_budget: bytes one capture may copy (None: half the RAM).
        database_url / blob_url / s3_endpoint_url: the catalog and the object store.
        db_size_limit / max_deltas_per_base / encode_threads: ``ManagerConfig``.
    """

    database_url: str
    blob_url: str
    s3_endpoint_url: str | None = None
    heartbeat_interval: float = 2.0
    max_tasks: int = 1
    task_stop_grace_seconds: float = 3.0
    task_memory_limit: int | None = None
    shutdown_grace_seconds: float = 25.0
    checkpoint_memory_budget: int | None = None
    db_size_limit: int = 1 << 20
    max_deltas_per_base: int = 50
    encode_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRuntime:
        return cls(**data)

    def open_manager(self) -> CheckpointManager:
        """The checkpoint manager of this catalog and object store."""
        from checkpoint import CheckpointManager, ManagerConfig

        return CheckpointManager.from_urls(
            self.database_url, self.blob_url, s3_endpoint_url=self.s3_endpoint_url,
            config=ManagerConfig(db_size_limit=self.db_size_limit,
                                 max_deltas_per_base=self.max_deltas_per_base,
                                 encode_threads=self.encode_threads))
