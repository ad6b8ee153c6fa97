"""The fallback for leaves that are not arrays: pickling, and type sniffing.

Generic leaves are pickled at capture time (the caller may mutate them right
after). Lists are pickled item by item and plain dicts entry by entry, so that a
delta can carry only an appended tail or the changed keys. The price is that
object identity shared *between* items of one list is not preserved.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from functools import lru_cache
from typing import Any

__all__ = ["dump", "framework_kind", "leaf_size", "load", "pickle_leaf", "unpickle_leaf"]

PROTOCOL = pickle.HIGHEST_PROTOCOL

_STATE_DICT_CLASSES = {
    "torch.nn.modules.module.Module",
    "torch.optim.optimizer.Optimizer",
    "torch.optim.lr_scheduler.LRScheduler",
    "torch.optim.lr_scheduler._LRScheduler",
}


@lru_cache(maxsize=4096)
def framework_kind(cls: type) -> str | None:
    """'state_dict', 'keras_weights' or None, from class names only (no imports)."""
    for base in cls.__mro__:
        name = f"{base.__module__}.{base.__qualname__}"
        if name in _STATE_DICT_CLASSES:
            return "state_dict"
        root = base.__module__.split(".")[0]
        if root in ("keras", "tf_keras") and base.__qualname__ in ("Model", "Functional", "Sequential"):
            return "keras_weights"
        if base.__module__.startswith("tensorflow.python.keras") and base.__qualname__ == "Model":
            return "keras_weights"
    return None


def dump(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=PROTOCOL)


def load(data: bytes) -> Any:
    return pickle.loads(data)


def pickle_leaf(obj: object) -> tuple[str, dict[str, Any], Any]:
    """(kind, meta, data) for a generic leaf; raises whatever pickling raises."""
    kind = type(obj)
    if kind is list:
        return "pickle_list", {}, tuple(dump(x) for x in obj)  # type: ignore[attr-defined]
    if kind is dict or kind is OrderedDict:
        pairs = tuple((dump(k), dump(v)) for k, v in obj.items())  # type: ignore[attr-defined]
        return "pickle_dict", {"odict": kind is OrderedDict}, pairs
    return "pickle", {}, dump(obj)


def unpickle_leaf(kind: str, meta: dict[str, Any], data: Any) -> object:
    if kind == "pickle":
        return load(data)
    if kind == "pickle_list":
        return [load(x) for x in data]
    if kind == "pickle_dict":
        pairs = ((load(k), load(v)) for k, v in data)
        return OrderedDict(pairs) if meta.get("odict") else dict(pairs)
    raise ValueError(f"unknown generic leaf kind {kind!r}")


def leaf_size(kind: str, data: Any) -> int:
    if kind == "pickle":
        return len(data)
    if kind == "pickle_list":
        return sum(len(x) for x in data)
    return sum(len(k) + len(v) for k, v in data)
