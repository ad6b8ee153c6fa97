"""The public surfaces of `activities` and `workflows` change only on purpose."""

from __future__ import annotations

import types

import activities
import workflows


def _public(package: types.ModuleType) -> set[str]:
    """The names ``package`` itself holds that are not private and not submodules."""
    return {name for name, value in vars(package).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and name != "annotations"}


def test_activities_all_is_pinned() -> None:
    assert sorted(activities.__all__) == [
        "CheckpointProvider", "CheckpointService", "TaskActivities", "TaskCheckpointSession",
        "TaskRuntime"]
    assert all(getattr(activities, name) is not None for name in activities.__all__)
    assert _public(activities) == set(activities.__all__)


def test_workflows_all_is_pinned() -> None:
    assert sorted(workflows.__all__) == ["BatchWorkflow", "JobWorkflow", "WORKFLOWS",
                                         "control_queue", "task_id_for", "validate_job_id"]
    assert workflows.WORKFLOWS == [workflows.JobWorkflow, workflows.BatchWorkflow]
    assert _public(workflows) == set(workflows.__all__)
