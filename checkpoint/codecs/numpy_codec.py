"""numpy arrays as raw bytes (every dtype without Python objects in it)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _native
from ._host import (
    address,
    differs,
    extent,
    needs_pinned,
    pinned_buffer,
    synchronize,
    unchanged,
    version_token,
    view_key,
)

__all__ = [
    "address", "copy_into", "describe", "differs", "dtype_from_token", "dtype_token", "extent", "matches", "name",
    "needs_pinned", "pinned_buffer", "restore", "synchronize", "unchanged", "version_token", "view_key",
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

        dtype: np.dtype[Any] = np.dtype(getattr(ml_dtypes, token.partition(":")[2]))
    else:
        dtype = np.lib.format.descr_to_dtype(token)
    return dtype


def describe(obj: np.ndarray) -> dict[str, Any]:
    return {
        "fw": name,
        "dtype": dtype_token(obj.dtype),
        "shape": tuple(int(s) for s in obj.shape),
        "itemsize": int(obj.dtype.itemsize),
        "nbytes": int(obj.nbytes),
    }


def copy_into(obj: np.ndarray, out: Any, *, non_blocking: bool = False) -> None:
    if not obj.nbytes:
        return
    if obj.flags.c_contiguous and isinstance(out, np.ndarray) and out.dtype == np.uint8:
        _native.copy(out[:obj.nbytes], obj.reshape(-1).view(np.uint8))
        return
    np.copyto(out.view(obj.dtype).reshape(obj.shape), obj, casting="no")


def restore(meta: dict[str, Any], data: np.ndarray, *, share: bool = False) -> np.ndarray:
    dtype = dtype_from_token(meta["dtype"])
    shape = tuple(meta["shape"])
    if dtype.hasobject or dtype.itemsize != meta["itemsize"]:
        raise ValueError(f"dtype {dtype} does not match the recorded item size {meta['itemsize']}")
    if meta["nbytes"] == 0:
        return np.empty(shape, dtype)
    count = math.prod(shape)
    value = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    if share and data.flags.writeable and isinstance(data, np.ndarray):
        return data[:meta["nbytes"]].view(dtype).reshape(shape)   # the buffer, writable
    return value.copy()
