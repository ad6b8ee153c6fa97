"""Items and results as Temporal payloads, handled without decoding user values.

Sandbox-safe: ``json`` and temporalio's protobuf messages only. An item or a
result is one ``Payload`` with an encoding of its own:

- ``json/plain``: a JSON value (Temporal's own JSON encoding, readable in the UI
  and the CLI);
- ``binary/plain``: ``bytes``;
- ``binary/x-npy``: a NumPy array as ``.npy`` bytes (no pickled objects);
- ``binary/x-python-pickle``: any other object, pickled (metadata
  ``python-type`` names its class);
- ``binary/x-payload-list``: a list of payloads, each of its own encoding (a
  serialized ``Payloads`` message), for lists that are not all JSON;
- ``json/x-crowdcompute-task-error``: the error record that stands for a failed
  task's result when the job returns exceptions (JSON text).

Workflows only ever look at an item's encoding and decode JSON themselves;
everything else they carry as an opaque ``Payload`` (``RawValue`` in and out of
activities and child workflows). The SDK (``sdk._values``) encodes and decodes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.common import RawValue

ENCODING_JSON = "json/plain"
ENCODING_BYTES = "binary/plain"
ENCODING_NULL = "binary/null"
ENCODING_NPY = "binary/x-npy"
ENCODING_PICKLE = "binary/x-python-pickle"
ENCODING_LIST = "binary/x-payload-list"
# A failed task's result in a ``return_exceptions`` job: its error record as JSON
# (type, message, attempts, task_id, index); the client turns it into TaskFailed.
ENCODING_TASK_ERROR = "json/x-crowdcompute-task-error"
# Metadata key of a pickled payload: the class of the value (for previews).
PYTHON_TYPE = "python-type"


def encoding_of(payload: Payload) -> str:
    """The payload's ``encoding`` metadata ("" when it has none)."""
    return payload.metadata.get("encoding", b"").decode()


def json_payload(value: Any) -> Payload:
    """``value`` (a JSON value) as a ``json/plain`` payload."""
    data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return Payload(metadata={"encoding": ENCODING_JSON.encode()}, data=data)


def task_error_payload(body: dict[str, Any]) -> Payload:
    """A failed task's error record as a result payload."""
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return Payload(metadata={"encoding": ENCODING_TASK_ERROR.encode()}, data=data)


def task_error_of(payload: Payload) -> dict[str, Any] | None:
    """The error record of a :func:`task_error_payload`, None for any other payload."""
    if encoding_of(payload) != ENCODING_TASK_ERROR:
        return None
    body: dict[str, Any] = json.loads(payload.data)
    return body


def is_json(payload: Payload) -> bool:
    return encoding_of(payload) == ENCODING_JSON


def json_value(payload: Payload) -> Any:
    """The JSON value of a ``json/plain`` payload."""
    return json.loads(payload.data)


def pack(payloads: Sequence[Payload]) -> Payload:
    """A list of payloads as one: a JSON list when every one is JSON, else a payload list."""
    if all(is_json(p) for p in payloads):
        return json_payload([json_value(p) for p in payloads])
    data = Payloads(payloads=list(payloads)).SerializeToString()
    return Payload(metadata={"encoding": ENCODING_LIST.encode()}, data=data)


def unpack(payload: Payload) -> list[Payload]:
    """Inverse of :func:`pack` (also of any JSON list)."""
    encoding = encoding_of(payload)
    if encoding == ENCODING_LIST:
        return list(Payloads.FromString(payload.data).payloads)
    if encoding == ENCODING_JSON:
        values = json_value(payload)
        if isinstance(values, list):
            return [json_payload(v) for v in values]
    raise ValueError(f"expected a list of items, got a payload of encoding {encoding!r}")


def list_result(payloads: Sequence[Payload]) -> Any:
    """A workflow's list of results: plain JSON values when all are JSON, else a payload list."""
    if all(is_json(p) for p in payloads):
        return [json_value(p) for p in payloads]
    return RawValue(pack(payloads))


def is_given(raw: RawValue | None) -> bool:
    """True when an optional ``RawValue`` argument was passed (older callers pass none)."""
    return raw is not None and raw.payload is not None and bool(raw.payload.metadata)
