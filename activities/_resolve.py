"""Import a task function from its ``module:qualname`` path."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from temporalio.exceptions import ApplicationError


@lru_cache(maxsize=256)
def resolve_function(path: str) -> Callable[..., Any]:
    """Return the callable at ``path``; a non-retryable error if there is none."""
    module_name, _, qualname = path.partition(":")
    try:
        if not module_name or not qualname:
            raise ValueError("expected 'module:function'")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{type(obj).__name__} is not callable")
    except Exception as exc:
        raise ApplicationError(
            f"cannot load task function {path!r}: {type(exc).__name__}: {exc}",
            type="FunctionNotFound",
            non_retryable=True,
        ) from exc
    return obj  # type: ignore[no-any-return]
