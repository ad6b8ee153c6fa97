"""Activities: ``run_task`` executes user functions; cleanup hooks for checkpoints."""

from activities.context import CheckpointSession, NotInTaskError, TaskContext, current_task
from activities.tasks import CheckpointManager, TaskActivities

__all__ = [
    "CheckpointManager",
    "CheckpointSession",
    "NotInTaskError",
    "TaskActivities",
    "TaskContext",
    "current_task",
]
