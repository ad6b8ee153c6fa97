"""Items and results cross Temporal as base64 strings of pickles.

Used on the client and in activities only; workflows pass the strings through
untouched and never unpickle user data.
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
