"""A small evaluator of identity policies for the least-privilege tests.

It answers "does this set of policy documents allow this action on this
resource, given these request context keys?" with IAM's rules for what the
CrowdCompute roles use: Allow statements (the roles have no Deny), ``*`` and
``?`` wildcards in actions (case-insensitive) and resources, and the
condition operators StringEquals, StringLike and ArnLike. A condition on a
key the request does not carry fails, as in IAM. Anything else (NotAction,
NotResource, other operators) raises, so a policy that grows beyond this
evaluator fails the tests instead of being judged wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

_OPERATORS = {"StringEquals", "StringLike", "ArnLike"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        if operator not in _OPERATORS:
            raise ValueError(f"condition operator not evaluated here: {operator}")
        for key, expected in tests.items():
            if key not in context:
                return False
            actual = context[key]
            patterns = _as_list(expected)
            if operator == "StringEquals" and actual not in patterns:
                return False
            if operator != "StringEquals" and not any(fnmatchcase(actual, p) for p in patterns):
                return False
    return True


def allows(documents: Iterable[Mapping[str, Any]], action: str, resource: str,
           context: Mapping[str, str] | None = None) -> bool:
    """Whether any Allow statement of ``documents`` grants ``action`` on ``resource``."""
    for document in documents:
        for statement in _as_list(document["Statement"]):
            unknown = set(statement) - {"Sid", "Effect", "Action", "Resource", "Condition"}
            if unknown or statement["Effect"] != "Allow":
                raise ValueError(f"statement not evaluated here: {statement}")
            if not any(fnmatchcase(action.lower(), a.lower()) for a in _as_list(statement["Action"])):
                continue
            if not any(fnmatchcase(resource, r) for r in _as_list(statement["Resource"])):
                continue
            if _condition_holds(statement.get("Condition", {}), context or {}):
                return True
    return False
