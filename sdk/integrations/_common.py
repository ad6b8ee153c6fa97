"""What the integration modules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdk._task import NotInTaskError, TaskContext, current_task


def lazy_attribute(module: str, name: str,
                   build: Callable[[], Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds ``name`` once, on its first look-up.

    The framework a class derives from is imported only then, so importing an
    integration module (or ``sdk``) loads no framework.
    """
    built: dict[str, Any] = {}

    def module_getattr(attr: str) -> Any:
        if attr != name:
            raise AttributeError(f"module {module!r} has no attribute {attr!r}")
        if attr not in built:
            built[attr] = build()
        return built[attr]

    return module_getattr


def task() -> TaskContext | None:
    """The running task's context, or None outside a task (the callbacks then only train)."""
    try:
        return current_task()
    except NotInTaskError:
        return None
