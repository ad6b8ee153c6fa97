"""User items and results as Temporal payloads (see ``workflows.payloads`` for the encodings).

JSON values travel as ``json/plain`` (exactly: a tuple, a dict with non-string
keys or a NaN is not JSON and is pickled rather than silently changed), bytes
as ``binary/plain``, NumPy arrays as ``.npy`` bytes, anything else pickled.
NumPy is only touched when the value is an array (so it is already imported):
a client of JSON items never loads it. Used by the client and in task
processes only; workflows never decode a non-JSON payload.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
from collections.abc import Iterable
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    CompositePayloadConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
)

from workflows.models import is_model, model_from_json
from workflows.payloads import (
    ENCODING_BYTES,
    ENCODING_JSON,
    ENCODING_LIST,
    ENCODING_NPY,
    ENCODING_NULL,
    ENCODING_PICKLE,
    PYTHON_TYPE,
    encoding_of,
    json_payload,
    json_value,
    pack,
    unpack,
)

# Deeper structures are pickled (json would hit the recursion limit anyway).
MAX_JSON_DEPTH = 100


def is_json_value(value: Any, depth: int = 0) -> bool:
    """True when ``value`` survives a JSON round trip unchanged (exact types only)."""
    if depth > MAX_JSON_DEPTH:
        return False
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(is_json_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and is_json_value(v, depth + 1) for k, v in value.items())
    return False


def _npy_array(value: Any) -> bool:
    # The type's name first: every value a workflow sends passes here, and inside
    # the workflow sandbox a ``sys.modules`` look-up is slow enough that one per
    # argument of 250 scheduled activities overran the deadlock detector.
    if type(value).__name__ != "ndarray":
        return False
    numpy = sys.modules.get("numpy")
    return (numpy is not None and type(value) is numpy.ndarray
            and not value.dtype.hasobject)


def encode_value(value: Any) -> Payload:
    """One item or result as a payload of its own encoding.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: the value cannot be pickled.
    """
    if is_json_value(value):
        return json_payload(value)
    if type(value) is bytes:
        return Payload(metadata={"encoding": ENCODING_BYTES.encode()}, data=value)
    if _npy_array(value):
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return Payload(metadata={"encoding": ENCODING_NPY.encode()}, data=buf.getvalue())
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    kind = type(value)
    return Payload(metadata={"encoding": ENCODING_PICKLE.encode(),
                             PYTHON_TYPE: f"{kind.__module__}.{kind.__qualname__}".encode()},
                   data=data)


def decode_value(payload: Payload) -> Any:
    """Inverse of :func:`encode_value` (a payload list decodes to a list)."""
    encoding = encoding_of(payload)
    if encoding == ENCODING_JSON:
        return json_value(payload)
    if encoding == ENCODING_BYTES:
        return bytes(payload.data)
    if encoding == ENCODING_NULL:
        return None
    if encoding == ENCODING_NPY:
        import numpy as np

        return np.load(io.BytesIO(payload.data), allow_pickle=False)
    if encoding == ENCODING_PICKLE:
        return pickle.loads(payload.data)  # noqa: S301 - our own clients' items
    if encoding == ENCODING_LIST:
        return [decode_value(p) for p in unpack(payload)]
    raise ValueError(f"unknown payload encoding {encoding!r}")


def encode_list(values: Iterable[Any]) -> Payload:
    """A list of values as one payload (a JSON list when every value is JSON)."""
    return pack([encode_value(v) for v in values])


class _ValueConverter(EncodingPayloadConverter):
    """Decodes one of our user-value encodings; encodes NumPy arrays."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding

    @property
    def encoding(self) -> str:
        return self._encoding

    def to_payload(self, value: Any) -> Payload | None:
        # Only arrays: JSON conversion errors must still reach the caller (a model
        # that is not JSON is a bug, not something to pickle quietly).
        if self._encoding == ENCODING_NPY and _npy_array(value):
            return encode_value(value)
        return None

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        return decode_value(payload)


class _ModelTypes(JSONTypeConverter):
    """Decodes our models with their field types resolved once per class.

    Temporal's generic conversion resolves a dataclass's type hints on every
    value (string annotations evaluated each time): about a tenth of a busy
    worker's CPU with tiny tasks, where every ``run_task`` input is one.
    """

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if not is_model(hint):
            return JSONTypeConverter.Unhandled
        return model_from_json(hint, value)


def _payload_converters() -> list[EncodingPayloadConverter]:
    """Temporal's default converters, the JSON one taught our models."""
    return [JSONPlainPayloadConverter(custom_type_converters=[_ModelTypes()])
            if type(c) is JSONPlainPayloadConverter else c
            for c in DefaultPayloadConverter.default_encoding_payload_converters]


class ValuePayloadConverter(CompositePayloadConverter):
    """Temporal's default converters plus ours: arrays as ``.npy``, our encodings decoded.

    JSON values and our models (dataclasses) still go through Temporal's JSON
    converter; payloads of our other encodings (pickles, payload lists) decode.
    """

    def __init__(self) -> None:
        super().__init__(
            _ValueConverter(ENCODING_NPY),
            *_payload_converters(),
            _ValueConverter(ENCODING_LIST),
            _ValueConverter(ENCODING_PICKLE),
        )
