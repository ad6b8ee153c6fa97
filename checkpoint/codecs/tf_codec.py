"""TensorFlow variables and eager tensors as raw bytes.

``tf.Variable`` leaves restore as ``tf.Variable`` (same dtype, shape, name,
trainable flag), eager tensors as ``tf.constant``. Keras models are converted to
their ``get_weights()`` list before flattening (see ``codecs.convert``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

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
    "address", "copy_into", "describe", "differs", "extent", "matches", "name", "needs_pinned", "pinned_buffer",
    "restore", "synchronize", "unchanged", "version_token", "view_key",
]

name = "tf"


def matches(obj: object) -> bool:
    if isinstance(obj, tf.Variable) or (isinstance(obj, tf.Tensor) and hasattr(obj, "numpy")):
        dtype = obj.dtype
        return bool(dtype.is_numpy_compatible) and dtype != tf.string
    return False


def describe(obj: Any) -> dict[str, Any]:
    is_var = isinstance(obj, tf.Variable)
    itemsize = obj.dtype.size
    shape = tuple(int(s) for s in obj.shape)
    meta: dict[str, Any] = {
        "fw": name,
        "dtype": obj.dtype.name,
        "shape": shape,
        "itemsize": itemsize,
        "nbytes": math.prod(shape) * itemsize,
        "var": is_var,
    }
    if is_var:
        meta["trainable"] = bool(obj.trainable)
        meta["name"] = obj.name.split(":")[0]
    return meta


def copy_into(obj: Any, out: np.ndarray, *, non_blocking: bool = False) -> None:
    value = np.asarray(obj.numpy())
    if value.nbytes:
        np.copyto(out.view(value.dtype).reshape(value.shape), value, casting="no")


def restore(meta: dict[str, Any], data: np.ndarray, *, share: bool = False) -> Any:
    # TensorFlow copies host memory into its own tensors: ``share`` changes nothing.
    dtype = tf.as_dtype(meta["dtype"])
    if dtype.size != meta["itemsize"]:
        raise ValueError(f"dtype {dtype.name} does not match the recorded item size {meta['itemsize']}")
    shape = tuple(meta["shape"])
    np_dtype = np.dtype(dtype.as_numpy_dtype)
    if meta["nbytes"]:
        value = np.frombuffer(data, dtype=np_dtype, count=math.prod(shape)).reshape(shape).copy()
    else:
        value = np.empty(shape, np_dtype)
    if meta.get("var"):
        return tf.Variable(value, dtype=dtype, trainable=meta["trainable"], name=meta["name"])
    return tf.constant(value, dtype=dtype)
