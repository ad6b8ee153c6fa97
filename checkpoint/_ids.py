"""Validation and encoding of the ids that end up in blob keys and paths.

Every job or task id is validated (a non-empty string of at most 255
characters without NUL) and then percent-encoded so that it is a single,
harmless key component: no ``/``, no ``.`` (so never ``..``), no control
characters. Decoding is ``urllib.parse.unquote``.
"""

from __future__ import annotations

from urllib.parse import quote

from .errors import InvalidId

__all__ = ["MAX_ID_LENGTH", "blob_key", "chunk_key", "encode_id", "job_prefix", "task_prefix", "validate_id"]

MAX_ID_LENGTH = 255


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a usable id, else raise :class:`InvalidId`."""
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidId(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH} allowed")
    if "\x00" in value:
        raise InvalidId(f"{what} {value!r} contains a NUL character")
    return value


def encode_id(value: str, what: str = "id") -> str:
    """Validate ``value`` and percent-encode it into one safe key component."""
    validate_id(value, what)
    return quote(value, safe="").replace(".", "%2E")


def job_prefix(prefix: str, job_id: str) -> str:
    """``{prefix}/{job}/`` with the job id encoded."""
    return f"{prefix}/{encode_id(job_id, 'job id')}/"


def task_prefix(prefix: str, job_id: str, task_id: str) -> str:
    """``{prefix}/{job}/{task}/`` with both ids encoded."""
    return f"{job_prefix(prefix, job_id)}{encode_id(task_id, 'task id')}/"


def blob_key(prefix: str, job_id: str, task_id: str, epoch: int, seq: int, part: int) -> str:
    """The create-only key of one part of one checkpoint of one attempt."""
    return f"{task_prefix(prefix, job_id, task_id)}e{epoch}/s{seq}/p{part}"


def chunk_key(prefix: str, job_id: str, task_id: str, epoch: int, seq: int, sha256: str) -> str:
    """The create-only key of a file chunk first stored by this save (``sha256``: hex digest)."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return f"{task_prefix(prefix, job_id, task_id)}e{epoch}/s{seq}/c{sha256}"
