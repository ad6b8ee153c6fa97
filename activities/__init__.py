"""Activities: ``run_task`` executes user functions; cleanup hooks for checkpoints."""

from activities.checkpointing import CheckpointService, TaskCheckpointSession
from activities.context import CheckpointSession, NotInTaskError, TaskContext, current_task
from activities.tasks import CheckpointProvider, TaskActivities

__all__ = [
    "CheckpointService",
    "TaskCheckpointSession",
    "CheckpointProvider",
    "CheckpointSession",
    "NotInTaskError",
    "TaskActivities",
    "TaskContext",
    "current_task",
]
