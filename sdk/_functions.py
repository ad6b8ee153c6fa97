"""Turn a task function into the ``module:qualname`` path a worker imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

HOW_TO_FIX = (
    "Task functions are imported by path on the workers: define {name} with `def` at "
    "the top level of an importable module (e.g. mytasks.py) and pass mytasks.{name}."
)
LAMBDA_FIX = (
    "Task functions are imported by path on the workers: define the function with `def` at "
    "the top level of an importable module (e.g. `def square(x): ...` in mytasks.py) and "
    "pass mytasks.square."
)


def function_path(fn: Callable[..., Any] | str) -> str:
    """``module:qualname`` of ``fn``; ``ValueError`` if a worker could not import it."""
    if isinstance(fn, str):
        if fn.count(":") != 1 or not all(fn.split(":")):
            raise ValueError(f"task function path {fn!r} must look like 'module:function'")
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    name = getattr(fn, "__name__", repr(fn))
    if not callable(fn) or not module or not qualname:
        raise TypeError(f"{fn!r} is not a function that can be referenced by import path")
    if "<lambda>" in qualname:
        raise ValueError("lambdas cannot run as tasks. " + LAMBDA_FIX)
    if "<locals>" in qualname:
        raise ValueError(
            f"{qualname} is defined inside another function and cannot run as a task. "
            + HOW_TO_FIX.format(name=name)
        )
    if module == "__main__":
        raise ValueError(
            f"{name} is defined in the script being run (__main__), which workers cannot "
            "import. " + HOW_TO_FIX.format(name=name)
        )
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not fn and getattr(obj, "__wrapped__", None) is not fn:
        raise ValueError(f"{module}.{qualname} does not resolve to {fn!r}. " + HOW_TO_FIX.format(name=name))
    return f"{module}:{qualname}"
