"""Turn nested state into ``{path: leaf}`` and back, as pure functions.

Containers that are walked: ``dict`` and ``OrderedDict`` (with plain keys),
``list``, ``tuple``, namedtuples and dataclass instances. Everything else is a
leaf. Two rules keep the leaf count proportional to the *structure* of the state
rather than its size:

* a ``list`` or ``tuple`` that holds no array anywhere below it is one leaf
  (lists of thousands of small objects are then diffed as one list: see
  ``_delta``);
* a ``dict`` that holds no array and whose values are all plain scalars, or
  that has more than ``MAX_PLAIN_DICT`` entries, is one leaf (diffed by key).

The tree definition (``TreeDef``) is made of tuples, strings and plain keys only,
so it can be stored and read back without trusting a pickle. Node forms::

    None                              a leaf
    ("d", keys, children)             dict
    ("o", keys, children)             collections.OrderedDict
    ("l", children) / ("t", children) list / tuple
    ("n", "module:qualname", children)            namedtuple
    ("c", "module:qualname", names, children)     dataclass instance
    ("r", path)                       the object already at ``path`` (earlier in order)

Shared references are kept: an object met again at a later path (the same
object, or an array at the same ``address`` whose ``view_key`` is equal: the
same view of the same memory, such as a tied weight in a ``state_dict``)
becomes an ``r`` node, is stored once and is restored as one object at both
paths. Objects inside two different pickled leaves are pickled, and restored,
separately.

Reading a stored tree definition never imports anything: ``resolve_class``
finds a namedtuple or dataclass only in a module the process has already
imported (``sys.modules``), and ``inflate`` accepts it only if it is a
namedtuple (``n``) or a dataclass with those fields (``c``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["MAX_PLAIN_DICT", "TreeDef", "flatten", "inflate", "join_path", "leaf_count", "resolve_class"]

TreeDef = Any
MAX_PLAIN_DICT = 64
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_KEY_TYPES = (type(None), bool, int, float, str, bytes)


def _identity(obj: object) -> object:
    return obj


def _never(obj: object) -> bool:
    return False


def _no_address(obj: object) -> Hashable | None:
    return None


def _escape(key: object) -> str:
    if isinstance(key, str):
        # "" would make a child's path equal to its parent's ("" at the root), so
        # its children could collide with a sibling's: it gets a token of its own.
        return key.replace("~", "~0").replace("/", "~1").replace("#", "~2") if key else "~3"
    return "#" + repr(key)


def join_path(parent: str, key: object) -> str:
    """Path of ``key`` under ``parent``; string keys are escaped so paths are unique."""
    part = _escape(key)
    return part if parent == "" else f"{parent}/{part}"


def _plain_key(key: object) -> bool:
    if type(key) is tuple:
        return all(_plain_key(k) for k in key)
    return type(key) in _KEY_TYPES


def _class_ref(cls: type) -> str | None:
    ref = f"{cls.__module__}:{cls.__qualname__}"
    try:
        return ref if resolve_class(ref) is cls else None
    except (ImportError, AttributeError, ValueError):
        return None


@lru_cache(maxsize=1024)
def resolve_class(ref: str) -> type:
    """The class named ``module:qualname``, from a module that is already imported.

    Never imports: a stored reference must not make the process load code.

    Raises:
        ValueError: the module is not imported, or the name is not a class in it.
    """
    module, _, qualname = ref.partition(":")
    if not qualname or "<" in qualname:
        raise ValueError(f"class reference {ref!r} cannot be resolved")
    obj: Any = sys.modules.get(module)
    if obj is None:
        raise ValueError(f"class reference {ref!r}: module {module!r} is not imported")
    for name in qualname.split("."):
        # the namespace itself, not getattr: a module's __getattr__ may import
        obj = vars(obj).get(name) if hasattr(obj, "__dict__") else None
    if not isinstance(obj, type):
        raise ValueError(f"{ref!r} is not a class")
    return obj


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and type(obj) is not tuple and hasattr(type(obj), "_fields")


def _dataclass_names(obj: object) -> tuple[str, ...] | None:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return None
    names = tuple(f.name for f in dataclasses.fields(obj))
    extra = getattr(obj, "__dict__", None)
    if extra is not None and set(extra) != set(names):
        return None  # attributes outside the declared fields: keep it whole
    return names


class _Walker:
    """One flatten call: conversion hook, array predicate, memo, cycle guard, shared references."""

    def __init__(self, convert: Callable[[object], object], is_array: Callable[[object], bool],
                 address: Callable[[object], Hashable | None], view_key: Callable[[object], Hashable]):
        self.convert = convert
        self.is_array = is_array
        self.address = address
        self.view_key = view_key
        self.memo: dict[int, bool] = {}
        self.leaves: dict[str, object] = {}
        self.stack: set[int] = set()
        # id -> (first path, the object): holding the object keeps its id from
        # being reused by a later temporary (a converted state_dict)
        self.seen: dict[int, tuple[str, object]] = {}
        # array address -> [(path, array, its view key or None until needed)]
        self.views: dict[Hashable, list[list[Any]]] = {}

    def has_array(self, obj: object) -> bool:
        if type(obj) in _PLAIN:
            return False
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = False  # cycle guard: a node being examined counts as array-free
        found = self._examine(obj)
        self.memo[key] = found
        return found

    def _examine(self, obj: object) -> bool:
        converted = self.convert(obj)
        if converted is not obj:
            return True
        if self.is_array(obj):
            return True
        if isinstance(obj, Mapping):
            return any(self.has_array(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return any(self.has_array(v) for v in obj)
        names = _dataclass_names(obj)
        return names is not None and any(self.has_array(getattr(obj, n)) for n in names)

    def walk(self, obj: object, path: str) -> TreeDef:
        if type(obj) in _PLAIN:
            return self._leaf(obj, path)
        node = id(obj)
        if node in self.stack:
            raise ValueError(f"cyclic reference at {path or '<root>'!r}")
        first = self.seen.get(node)
        if first is not None:
            return ("r", first[0])
        self.seen[node] = (path, obj)
        converted = self.convert(obj)
        if converted is not obj:
            return self.walk(converted, path)
        if self.is_array(obj):
            same = self._same_view(obj, path)
            return self._leaf(obj, path) if same is None else ("r", same)
        self.stack.add(node)
        try:
            return self._container(obj, path)
        finally:
            self.stack.discard(node)

    def _same_view(self, obj: object, path: str) -> str | None:
        """The path of an earlier array that is the same view of the same memory."""
        address = self.address(obj)
        if address is None:
            return None
        earlier = self.views.setdefault(address, [])
        if earlier:   # a rare collision: only now the full keys
            key = self.view_key(obj)
            for entry in earlier:
                if entry[2] is None:
                    entry[2] = self.view_key(entry[1])
                if entry[2] == key:
                    return str(entry[0])
        earlier.append([path, obj, None])
        return None

    def _leaf(self, obj: object, path: str) -> TreeDef:
        self.leaves[path] = obj
        return None

    def _children(self, items: Iterator[tuple[object, object]], path: str) -> tuple[TreeDef, ...]:
        return tuple(self.walk(v, join_path(path, k)) for k, v in items)

    def _container(self, obj: object, path: str) -> TreeDef:
        kind = type(obj)
        if kind is dict or kind is OrderedDict:
            assert isinstance(obj, dict)
            if not all(_plain_key(k) for k in obj) or not self._walk_dict(obj):
                return self._leaf(obj, path)
            tag = "d" if kind is dict else "o"
            return (tag, tuple(obj), self._children(iter(obj.items()), path))
        if kind is list or kind is tuple:
            assert isinstance(obj, (list, tuple))
            if not self.has_array(obj):
                return self._leaf(obj, path)
            return ("l" if kind is list else "t", self._children(enumerate(obj), path))
        if _is_namedtuple(obj):
            ref = _class_ref(kind)
            if ref is not None:
                assert isinstance(obj, tuple)
                return ("n", ref, self._children(zip(kind._fields, obj), path))  # type: ignore[attr-defined]
        names = _dataclass_names(obj)
        if names is not None:
            ref = _class_ref(kind)
            if ref is not None:
                items = ((n, getattr(obj, n)) for n in names)
                return ("c", ref, names, self._children(items, path))
        return self._leaf(obj, path)

    def _walk_dict(self, obj: dict[Any, Any]) -> bool:
        if any(self.has_array(v) for v in obj.values()):
            return True
        if len(obj) > MAX_PLAIN_DICT:
            return False
        return not all(type(v) in _PLAIN for v in obj.values())


def flatten(
    state: object,
    *,
    convert: Callable[[object], object] = _identity,
    is_array: Callable[[object], bool] = _never,
    address: Callable[[object], Hashable | None] = _no_address,
    view_key: Callable[[object], Hashable] = _identity,
) -> tuple[TreeDef, dict[str, object]]:
    """Split ``state`` into a tree definition and ``{path: leaf}`` in traversal order.

    Args:
        state: the nested state.
        convert: maps an object to a replacement to walk instead (e.g. a torch module
            to its ``state_dict()``); returns the object itself when not applicable.
        is_array: true for objects that are array leaves (never walked into).
        address: for an array leaf, a cheap key of where its data starts (None: not
            known); arrays at one address are compared by ``view_key``, and a later
            array of an equal key becomes a reference to the first.
        view_key: for two array leaves at one address, what must be equal for them
            to be the same view of the same memory.

    Raises:
        ValueError: the state contains a reference cycle through walked containers.
    """
    walker = _Walker(convert, is_array, address, view_key)
    treedef = walker.walk(state, "")
    return treedef, walker.leaves


def inflate(treedef: TreeDef, leaves: Mapping[str, object]) -> object:
    """Rebuild the structure described by ``treedef`` with the given leaves.

    Raises:
        ValueError: a class the tree names cannot be resolved or is not of its node's
            form, or a reference names no object built before it.
        KeyError: a leaf the tree names is missing.
    """
    return _build(treedef, leaves, "", {})


def leaf_count(treedef: TreeDef) -> int:
    """How many leaves a tree definition has; checks every node's form (no imports).

    (Paths below a namedtuple node use its class's field names, which only the
    class knows: ``inflate`` finds a missing path.)

    Raises:
        ValueError: ``treedef`` is not a tree definition ``flatten`` could have made.
    """
    if treedef is None:
        return 1
    where = "a tree node"
    if type(treedef) is not tuple or not treedef or treedef[0] not in _NODE_SIZES:
        raise ValueError(f"malformed {where}")
    if treedef[0] == "r":
        if len(treedef) != 2 or type(treedef[1]) is not str:
            raise ValueError("malformed 'r' node")
        return 0
    tag, children = treedef[0], treedef[-1]
    if len(treedef) != _NODE_SIZES[tag] or type(children) is not tuple:
        raise ValueError(f"malformed {tag!r} node")
    if tag in ("d", "o", "c") and not _keys_ok(treedef[-2], len(children)):
        raise ValueError(f"malformed keys of a {tag!r} node")
    if tag in ("n", "c") and type(treedef[1]) is not str:
        raise ValueError(f"malformed class reference of a {tag!r} node")
    return sum(leaf_count(child) for child in children)


_NODE_SIZES = {"d": 3, "o": 3, "l": 2, "t": 2, "n": 3, "c": 4, "r": 2}


def _keys_ok(keys: object, count: int) -> bool:
    return type(keys) is tuple and len(keys) == count and len(set(keys)) == count \
        and all(_plain_key(k) for k in keys)


def _build(node: TreeDef, leaves: Mapping[str, object], path: str, built: dict[str, object]) -> object:
    obj = _make(node, leaves, path, built)
    built[path] = obj
    return obj


def _make(node: TreeDef, leaves: Mapping[str, object], path: str, built: dict[str, object]) -> object:
    if node is None:
        return leaves[path]
    tag = node[0]
    if tag == "r":
        target = node[1]
        if target not in built:
            raise ValueError(f"{path!r} refers to {target!r}, which is not built before it")
        return built[target]
    if tag in ("d", "o"):
        _, keys, children = node
        pairs = ((k, _build(c, leaves, join_path(path, k), built)) for k, c in zip(keys, children))
        return dict(pairs) if tag == "d" else OrderedDict(pairs)
    if tag in ("l", "t"):
        values = [_build(c, leaves, join_path(path, i), built) for i, c in enumerate(node[1])]
        return values if tag == "l" else tuple(values)
    if tag == "n":
        cls = resolve_class(node[1])
        names = getattr(cls, "_fields", None)
        if not issubclass(cls, tuple) or type(names) is not tuple or len(names) != len(node[2]):
            raise ValueError(f"{node[1]!r} is not a namedtuple of {len(node[2])} fields")
        make: Any = cls   # a namedtuple class: its own constructor, not tuple's
        return make(*(_build(c, leaves, join_path(path, n), built) for n, c in zip(names, node[2])))
    if tag == "c":
        _, ref, names, children = node
        cls = resolve_class(ref)
        if not dataclasses.is_dataclass(cls) or \
                not set(names) <= {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"{ref!r} is not a dataclass with fields {names!r}")
        obj = cls.__new__(cls)
        for name, child in zip(names, children):
            object.__setattr__(obj, name, _build(child, leaves, join_path(path, name), built))
        return obj
    raise ValueError(f"unknown tree node {tag!r}")
