"""flatten / inflate: pure round trips over nested containers."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint._flatten import MAX_PLAIN_DICT, flatten, inflate, join_path
from checkpoint.codecs import convert, is_array

Point = namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Box:
    label: str
    content: object


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: object
    b: int = 0


def _flat(state):
    return flatten(state, convert=convert, is_array=is_array)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
    st.binary(max_size=5),
)
arrays = st.builds(lambda n, s: np.arange(n, dtype=np.float32) * s,
                   st.integers(0, 4), st.floats(-2, 2, allow_nan=False))
keys = st.one_of(st.text(max_size=4), st.integers(-3, 3), st.tuples(st.integers(0, 2), st.text(max_size=2)))


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(st.text(max_size=3), children, max_size=3).map(OrderedDict),
        st.builds(Point, children, children),
        st.builds(Box, st.text(max_size=3), children),
        st.builds(Frozen, children, st.integers()),
    )


states = st.recursive(st.one_of(scalars, arrays), _containers, max_leaves=20)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


@settings(max_examples=60, deadline=None)
@given(states)
def test_flatten_inflate_round_trip(state):
    treedef, leaves = _flat(state)
    rebuilt = inflate(treedef, leaves)
    assert _same(rebuilt, state) is True


@settings(max_examples=40, deadline=None)
@given(states)
def test_paths_are_unique_and_leaves_are_not_walked_containers(state):
    treedef, leaves = _flat(state)
    assert len(set(leaves)) == len(leaves)
    again, leaves_again = _flat(state)
    assert again == treedef
    assert list(leaves_again) == list(leaves)


def test_array_free_list_is_one_leaf():
    history = [{"step": i, "loss": float(i)} for i in range(10_000)]
    treedef, leaves = _flat({"w": np.zeros(3), "history": history})
    assert list(leaves) == ["w", "history"]
    assert leaves["history"] is history


def test_plain_dict_is_one_leaf_and_big_dict_is_one_leaf():
    config = {"lr": 0.1, "name": "run"}
    big = {f"k{i}": [i] for i in range(MAX_PLAIN_DICT + 1)}
    small_nested = {"a": [1], "b": 2}
    _, leaves = _flat({"w": np.zeros(1), "config": config, "big": big, "nested": small_nested})
    assert list(leaves) == ["w", "config", "big", "nested/a", "nested/b"]


def test_lists_with_arrays_are_walked():
    _, leaves = _flat([np.zeros(1), 3, [np.ones(2)]])
    assert list(leaves) == ["#0", "#1", "#2/#0"]


def test_escaped_paths_do_not_collide():
    state = {"a/b": np.zeros(1), "a": {"b": np.ones(1)}, 1: np.zeros(2), "#1": np.ones(2), "~": np.zeros(3)}
    _, leaves = _flat(state)
    assert len(leaves) == 5
    assert join_path("", "a/b") == "a~1b"
    assert join_path("x", 1) == "x/#1"


def test_empty_string_key_does_not_collide_with_its_siblings():
    # found by the round-trip property: key "" at the root had the root's own path,
    # so the list below it put its item at "#0", where the dict's key 0 also was
    state = {"": [np.zeros(1, np.float32)], 0: None}
    _, leaves = _flat(state)
    assert list(leaves) == ["~3/#0", "#0"]
    assert _same(inflate(*_flat(state)), state) is True


def test_local_namedtuple_becomes_a_leaf():
    Local = namedtuple("Local", "a")
    value = Local(np.zeros(2))
    treedef, leaves = _flat({"v": value})
    assert leaves["v"] is value


def test_cycle_through_walked_containers_is_rejected():
    state: dict = {"w": np.zeros(1)}
    state["self"] = state
    with pytest.raises(ValueError, match="cyclic"):
        _flat(state)


def test_root_leaf():
    treedef, leaves = _flat(5)
    assert treedef is None
    assert leaves == {"": 5}
    assert inflate(treedef, leaves) == 5


def test_an_object_met_twice_is_stored_once_and_restored_as_one():
    weights = np.arange(4.0)
    layer = {"w": weights, "scale": 2}
    history = [1, 2, 3]
    state = {"a": weights, "b": weights, "in_list": [weights, 1], "layer": layer, "again": layer,
             "history": history, "same_history": history, "empty": (), "empty_too": ()}
    treedef, leaves = _flat(state)
    assert list(leaves) == ["a", "in_list/#1", "layer/scale", "history", "empty"]
    rebuilt = inflate(treedef, leaves)
    assert rebuilt["b"] is rebuilt["a"] and rebuilt["in_list"][0] is rebuilt["a"]
    assert rebuilt["again"] is rebuilt["layer"] and rebuilt["layer"]["w"] is rebuilt["a"]
    assert rebuilt["same_history"] is rebuilt["history"]
    rebuilt["a"] += 1   # a write through one path shows through the others, as before the restore
    assert rebuilt["layer"]["w"][0] == 1.0


def test_the_same_view_of_one_memory_is_one_leaf_and_other_views_are_not():
    from checkpoint.codecs import address, view_key

    base = np.arange(6.0)
    state = {"base": base, "alias": base[:], "tail": base[2:], "cast": base.view(np.int64),
             "frozen": np.frombuffer(base.tobytes(), np.float64)}
    treedef, leaves = flatten(state, convert=convert, is_array=is_array, address=address,
                              view_key=view_key)
    assert list(leaves) == ["base", "tail", "cast", "frozen"]
    rebuilt = inflate(treedef, leaves)
    assert rebuilt["alias"] is rebuilt["base"]


def test_a_reference_must_name_an_object_built_before_it():
    from checkpoint._flatten import leaf_count

    with pytest.raises(ValueError, match="not built before"):
        inflate(("d", ("a", "b"), (("r", "b"), None)), {"b": 1})
    with pytest.raises(ValueError, match="not built before"):   # an ancestor: a cycle
        inflate(("d", ("a",), (("l", (("r", "a"),)),)), {})
    assert inflate(("d", ("a", "b"), (None, ("r", "a"))), {"a": [1]}) == {"a": [1], "b": [1]}
    assert leaf_count(("d", ("a", "b"), (None, ("r", "a")))) == 1
    for bad in (("r",), ("r", 5), ("r", "a", "b")):
        with pytest.raises(ValueError, match="malformed"):
            leaf_count(bad)
