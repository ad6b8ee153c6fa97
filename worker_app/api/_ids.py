"""Identifier rules for the REST edge.

Ids arrive in URL paths; anything that does not match is rejected with 422
before it reaches the catalog, Temporal, a file path or an object key.
"""

from __future__ import annotations

import re

__all__ = ["JOB_ID_PATTERN", "TASK_ID_PATTERN", "is_job_id", "is_task_id"]

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}:[0-9]{1,9}$"

# fullmatch + explicit ASCII classes: Python's "$" would accept a trailing "\n".
_JOB = re.compile(JOB_ID_PATTERN[1:-1])
_TASK = re.compile(TASK_ID_PATTERN[1:-1])


def is_job_id(value: str) -> bool:
    return _JOB.fullmatch(value) is not None


def is_task_id(value: str) -> bool:
    return _TASK.fullmatch(value) is not None

