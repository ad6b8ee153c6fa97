"""The public surfaces of `activities` and `workflows` change only on purpose."""

from __future__ import annotations

import activities
import workflows


def test_activities_all_is_pinned() -> None:
    assert sorted(activities.__all__) == [
        "CheckpointProvider", "CheckpointService", "TaskActivities", "TaskCheckpointSession",
        "TaskRuntime"]
    assert all(getattr(activities, name) is not None for name in activities.__all__)


def test_workflows_all_is_pinned() -> None:
    assert sorted(workflows.__all__) == ["BatchWorkflow", "JobWorkflow", "task_id_for",
                                         "validate_job_id"]
    assert workflows.WORKFLOWS == [workflows.JobWorkflow, workflows.BatchWorkflow]
