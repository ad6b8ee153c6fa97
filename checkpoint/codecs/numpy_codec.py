"""numpy arrays as raw bytes (every dtype without Python objects in it)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _memory

__all__ = [
    "copy_into", "describe", "dtype_from_token", "dtype_token", "matches", "name",
    "needs_pinned", "pinned_buffer", "restore", "synchronize", "unchanged", "version_token",
]

name = "numpy"


def matches(obj: object) -> bool:
    return type(obj) in (np.ndarray, np.memmap) and not obj.dtype.hasobject  # type: ignore[attr-defined]


def dtype_token(dtype: np.dtype[Any]) -> Any:
    """A plain (str / list / tuple) description of ``dtype`` that round-trips."""
    if dtype.type.__module__.split(".")[0] == "ml_dtypes":
        return f"ml_dtypes:{dtype.name}"
    return np.lib.format.dtype_to_descr(dtype)


def dtype_from_token(token: Any) -> np.dtype[Any]:
    if isinstance(token, str) and token.startswith("ml_dtypes:"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, token.partition(":")[2]))
    return np.lib.format.descr_to_dtype(token)


def describe(obj: np.ndarray) -> dict[str, Any]:
    return {
        "fw": name,
        "dtype": dtype_token(obj.dtype),
        "shape": tuple(int(s) for s in obj.shape),
        "itemsize": int(obj.dtype.itemsize),
        "nbytes": int(obj.nbytes),
    }


def copy_into(obj: np.ndarray, out: Any, *, non_blocking: bool = False) -> None:
    if obj.nbytes:
        np.copyto(out.view(obj.dtype).reshape(obj.shape), obj, casting="no")


def restore(meta: dict[str, Any], data: np.ndarray) -> np.ndarray:
    dtype = dtype_from_token(meta["dtype"])
    shape = tuple(meta["shape"])
    if dtype.hasobject or dtype.itemsize != meta["itemsize"]:
        raise ValueError(f"dtype {dtype} does not match the recorded item size {meta['itemsize']}")
    if meta["nbytes"] == 0:
        return np.empty(shape, dtype)
    count = math.prod(shape)
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()


def version_token(obj: Any) -> None:
    """numpy arrays carry no change counter: unchanged leaves are found by comparing bytes."""
    return None


def unchanged(obj: Any, token: Any) -> bool:
    return False


def needs_pinned(obj: Any) -> bool:
    return False


def pinned_buffer(nbytes: int) -> tuple[None, np.ndarray]:
    """Host memory needs no pinning here: a plain buffer, owned by its array."""
    return None, _memory.empty(nbytes)


def synchronize() -> None:
    """Copies are synchronous: nothing to wait for."""
