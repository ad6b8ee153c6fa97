"""Activities: ``run_task`` executes user functions; cleanup hooks for checkpoints."""

from activities._runtime import TaskRuntime
from activities.checkpointing import CheckpointService, TaskCheckpointSession
from activities.tasks import CheckpointProvider, TaskActivities

__all__ = [
    "CheckpointProvider",
    "CheckpointService",
    "TaskActivities",
    "TaskCheckpointSession",
    "TaskRuntime",
]
