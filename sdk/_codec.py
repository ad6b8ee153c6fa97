"""The first payload format: items and results as base64 strings of pickles.

Jobs started before Temporal-native payloads (``sdk._values``) still carry
these; task processes decode their items and encode their results this way,
and the client decodes such a job's results.
"""

from __future__ import annotations

import base64
import pickle
from typing import Any


def encode_value(value: Any) -> str:
    """Pickle ``value`` (highest protocol) and return it as ASCII base64."""
    return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def decode_value(data: str) -> Any:
    """Inverse of :func:`encode_value`."""
    return pickle.loads(base64.b64decode(data.encode("ascii")))
