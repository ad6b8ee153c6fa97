"""Framework codecs: recognise array leaves, copy their bytes, rebuild them.

Each framework lives in its own module and imports the framework inside it. A
framework is only consulted when the process has already imported it (it is in
``sys.modules``), so a numpy-only worker never imports torch or tensorflow, and
recognising a leaf never pays for an import.

An array codec works on raw bytes: ``describe`` gives plain metadata (``fw``,
``dtype``, ``shape``, ``itemsize``, ``nbytes`` plus codec extras), ``copy_into``
copies the leaf into a flat ``uint8`` host buffer in C order, and ``restore``
rebuilds an equal object from metadata and bytes. Every codec implements the
whole ``ArrayCodec`` protocol (capture never probes for optional methods):
frameworks without change tracking or device memory answer ``None`` /
``False`` and need no pinned buffers.

The registry is explicit (``NAMES``): stored metadata selects one of these
codecs by name and can never make the process import anything else.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Hashable
from typing import Any, Protocol

import numpy as np

from . import generic, numpy_codec

__all__ = [
    "NAMES", "ArrayCodec", "codec_for", "convert", "find_array_codec", "generic", "is_array", "address",
    "view_key",
]


class ArrayCodec(Protocol):
    """What capture and restore need of a framework; each codec module implements it all."""

    name: str

    def matches(self, obj: object) -> bool:
        """True when ``obj`` is an array leaf of this framework."""
        ...

    def describe(self, obj: Any) -> dict[str, Any]:
        """Plain metadata: ``fw``, ``dtype``, ``shape``, ``itemsize``, ``nbytes`` and extras."""
        ...

    def copy_into(self, obj: Any, out: Any, *, non_blocking: bool = False) -> None:
        """Copy the leaf's bytes (C order) into ``out``, a host buffer of ``nbytes``."""
        ...

    def restore(self, meta: dict[str, Any], data: np.ndarray, *, share: bool = False) -> object:
        """An object equal to the captured one, from its metadata and bytes.

        With ``share`` the object may use ``data``'s memory (when it is
        writable) instead of a copy: ``data`` then belongs to it.
        """
        ...

    def version_token(self, obj: Any) -> Any:
        """What identifies the leaf's current contents, or None when not tracked."""
        ...

    def unchanged(self, obj: Any, token: Any) -> bool:
        """True when nothing that ``token`` tracks changed: ``obj`` was not written
        through its framework since the token was taken (writes that bypass the
        counter are caught by ``differs``)."""
        ...

    def differs(self, obj: Any, data: np.ndarray, *, quick: bool = False) -> bool:
        """True when ``obj``'s bytes now differ from ``data`` (its flat ``uint8`` copy).

        Asked of leaves that ``unchanged`` let capture skip unread. ``quick``: a
        spot check cheap enough for the caller's pause (a sample of the bytes,
        nothing that waits for a device); False then only means no difference
        was seen. Without ``quick`` every byte is compared.
        """
        ...

    def needs_pinned(self, obj: Any) -> bool:
        """True when ``obj`` lives in device memory and copies into pinned host memory."""
        ...

    def address(self, obj: Any) -> Hashable | None:
        """A cheap key of where the leaf's data starts, or None when not known (then
        only the very same object is stored once)."""
        ...

    def view_key(self, obj: Any) -> Hashable:
        """What makes two leaves at one ``address`` the same view of the same memory
        (a tied weight in a ``state_dict``): equal keys are stored once and restored
        as one object."""
        ...

    def extent(self, obj: Any) -> tuple[Hashable, int, int] | None:
        """Where the leaf's bytes lie: (memory space, first address, end address), or
        None when not known; used to tell leaves whose memory overlaps."""
        ...

    def pinned_buffer(self, nbytes: int) -> tuple[Any, np.ndarray]:
        """A host buffer for device copies: (the object owning it, a flat uint8 view)."""
        ...

    def synchronize(self) -> None:
        """Wait for the asynchronous copies issued with ``non_blocking``."""
        ...


_MODULES = {"numpy": "numpy_codec", "torch": "torch_codec", "tf": "tf_codec"}
NAMES = tuple(_MODULES)


_IMPORTED: dict[str, ArrayCodec] = {}
_LOADED: dict[tuple[bool, bool], tuple[ArrayCodec, ...]] = {}


def codec_for(name: str) -> ArrayCodec:
    """The codec module registered under ``name`` (imports its framework)."""
    codec = _IMPORTED.get(name)
    if codec is not None:
        return codec   # a dictionary hit: capture asks this for every leaf
    try:
        module = _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown array codec {name!r}") from None
    codec = importlib.import_module(f"{__name__}.{module}")
    _IMPORTED[name] = codec
    return codec


def _loaded_codecs() -> tuple[ArrayCodec, ...]:
    key = ("torch" in sys.modules, "tensorflow" in sys.modules)
    found = _LOADED.get(key)
    if found is None:
        names = ("torch",) * key[0] + ("tf",) * key[1]
        found = _LOADED[key] = (numpy_codec, *map(codec_for, names))
    return found


# Types that are never arrays: answered without consulting any codec, which
# matters when a state holds many small Python objects.
_NEVER_ARRAY = frozenset({dict, list, tuple, str, bytes, int, float, bool, complex, type(None),
                          set, frozenset})


def find_array_codec(obj: object) -> ArrayCodec | None:
    """The codec that stores ``obj`` as raw bytes, or None for a generic leaf."""
    if type(obj) in _NEVER_ARRAY:
        return None
    if type(obj) is np.ndarray:
        return numpy_codec if numpy_codec.matches(obj) else None
    for codec in _loaded_codecs():
        if codec.matches(obj):
            return codec
    return None


def is_array(obj: object) -> bool:
    return find_array_codec(obj) is not None


def address(obj: object) -> Hashable | None:
    """An array leaf's ``ArrayCodec.address`` (``flatten`` asks it of every array leaf:
    the codec is found by type, each array type belonging to one codec)."""
    codec = _BY_TYPE.get(type(obj))
    if codec is None:
        codec = find_array_codec(obj)
        if codec is None:
            return None
        _BY_TYPE[type(obj)] = codec
    return codec.address(obj)


def view_key(obj: object) -> Hashable:
    """An array leaf's ``ArrayCodec.view_key`` (asked only after ``address``)."""
    return _BY_TYPE[type(obj)].view_key(obj)


_BY_TYPE: dict[type, ArrayCodec] = {}


def convert(obj: object) -> object:
    """Replace framework objects by their plain weights; ``obj`` itself otherwise.

    torch modules, optimizers and LR schedulers become their ``state_dict()`` and
    Keras models their ``get_weights()`` list; restoring yields those structures,
    which the caller loads with ``load_state_dict`` / ``set_weights``.
    """
    if type(obj) in _NEVER_ARRAY:
        return obj
    kind = generic.framework_kind(type(obj))  # type: ignore[arg-type]  # classes hash
    if kind == "state_dict":
        return obj.state_dict()  # type: ignore[attr-defined]
    if kind == "keras_weights":
        return list(obj.get_weights())  # type: ignore[attr-defined]
    return obj
