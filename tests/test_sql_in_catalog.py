"""All the SQL lives in the catalog's data functions (``checkpoint/catalog/``).

Parsed from the source: outside the catalog (and the SQL blob tier, whose one
table is its storage) no module builds a statement or imports SQLAlchemy's
expression language, and outside ``checkpoint`` none opens a session or
catches a SQLAlchemy error either: the other packages read and write the
catalog through ``CheckpointManager``, whose errors are ``checkpoint.errors``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("checkpoint", "workflows", "sdk", "activities", "worker_app")
# Where statements are built: the catalog (and its migrations), and the SQL tier.
SQL_HOMES = ("checkpoint/catalog/", "checkpoint/migrations/", "checkpoint/stores/sql.py")
# Transactions around catalog functions are the library's (the caller owns the
# transaction); engines and error types may be named anywhere in it.
LIBRARY_NAMES = {"Engine", "Session"}
ERRORS_MODULE = "sqlalchemy.exc"
RAW_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER)\s", re.IGNORECASE)


def _sources() -> list[tuple[str, ast.Module]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(SQL_HOMES):
                found.append((rel, ast.parse(path.read_text(), rel)))
    return found


def _sqlalchemy_uses(rel: str, tree: ast.Module) -> list[str]:
    """What ``rel`` takes from SQLAlchemy that it should leave to the catalog."""
    in_library = rel.startswith("checkpoint/")
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wrong += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "sqlalchemy"]
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.split(".")[0] == "sqlalchemy"):
            if node.module == ERRORS_MODULE:
                # caught and translated at the library's choke points, never above it
                allowed = {a.name for a in node.names} if in_library else set()
            else:
                allowed = LIBRARY_NAMES if in_library else set()
            wrong += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name not in allowed]
    return wrong


def _raw_sql(tree: ast.Module) -> list[str]:
    return [node.value.strip()[:40] for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and RAW_SQL.match(node.value) and not _is_docstring(tree, node)]


def _is_docstring(tree: ast.Module, constant: ast.Constant) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and body[0].value is constant:
                return True
    return False


def test_no_statement_is_built_outside_the_catalog() -> None:
    wrong = {rel: uses for rel, tree in _sources() if (uses := _sqlalchemy_uses(rel, tree))}
    assert wrong == {}


def test_no_raw_sql_outside_the_catalog() -> None:
    wrong = {rel: found for rel, tree in _sources() if (found := _raw_sql(tree))}
    assert wrong == {}


def test_the_check_sees_what_it_looks_for() -> None:
    # The rules themselves: a statement built in the manager, a session in the
    # API, raw SQL in a string.
    tree = ast.parse("from sqlalchemy import select, Engine\nfrom sqlalchemy.orm import Session\n"
                     "def f():\n    '''Select nothing.'''\n    return 'SELECT 1'\n")
    assert _sqlalchemy_uses("checkpoint/_manager.py", tree) == ["from sqlalchemy import select"]
    assert _sqlalchemy_uses("worker_app/gc.py", tree) == [
        "from sqlalchemy import select", "from sqlalchemy import Engine",
        "from sqlalchemy.orm import Session"]
    assert _raw_sql(tree) == ["SELECT 1"]
    errors = ast.parse("from sqlalchemy.exc import SQLAlchemyError\n")
    assert _sqlalchemy_uses("checkpoint/_chain.py", errors) == []
    assert _sqlalchemy_uses("worker_app/api/app.py", errors) == [
        "from sqlalchemy.exc import SQLAlchemyError"]
