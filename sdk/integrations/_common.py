"""What the integration modules share."""

from __future__ import annotations

from sdk._task import NotInTaskError, TaskContext, current_task


def task() -> TaskContext | None:
    """The running task's context, or None outside a task (the callbacks then only train)."""
    try:
        return current_task()
    except NotInTaskError:
        return None
