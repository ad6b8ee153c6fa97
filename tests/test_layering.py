"""Package arrows point one way (DESIGN.md §2): parsed from the source, every import counted.

    worker_app → workflows, activities, checkpoint, sdk
    activities → checkpoint, sdk (the in-task API), workflows (models)
    sdk        → workflows (models)
    workflows  → (nothing of ours: stdlib, temporalio, its own models)
    checkpoint → (nothing of ours)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("checkpoint", "workflows", "sdk", "activities", "worker_app")
ALLOWED = {
    "checkpoint": set(),
    "workflows": set(),
    "sdk": {"workflows"},
    "activities": {"checkpoint", "sdk", "workflows"},
    "worker_app": {"workflows", "activities", "checkpoint", "sdk"},
}
# The one exception, by file: sdk.run_local is a worker in this process (a test
# helper), so on its first call it loads the task runtime and the library; `import
# sdk` itself stays light (see test_light_client.py).
EXCEPTIONS = {"sdk/_local.py": {"activities", "checkpoint"}}


def _modules(path: Path) -> set[str]:
    """The absolute module names ``path`` imports anywhere (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _imports(path: Path) -> set[str]:
    """Our top-level packages that ``path`` imports."""
    return {n.split(".")[0] for n in _modules(path)} & set(PACKAGES)


def _edges() -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            for target in _imports(path) - {package} - EXCEPTIONS.get(rel, set()):
                out[package].setdefault(target, set()).add(rel)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_upward_arrow(package: str) -> None:
    wrong = {t: sorted(files) for t, files in _edges()[package].items() if t not in ALLOWED[package]}
    assert wrong == {}


def test_no_cycle_between_packages() -> None:
    edges = {p: set(t) for p, t in _edges().items()}
    for start in PACKAGES:
        seen, todo = set(), list(edges[start])
        while todo:
            node = todo.pop()
            assert node != start, f"cycle through {start}"
            if node not in seen:
                seen.add(node)
                todo.extend(edges[node])


def _private_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` with a private part (``_x``) that ``path`` imports."""
    return {n for n in _modules(path) if n.split(".")[0] == package
            and any(p.startswith("_") for p in n.split(".")[1:])}


def test_checkpoint_is_used_through_its_facade() -> None:
    """Above ``checkpoint``, only its façade, ``checkpoint.errors`` and
    ``checkpoint.stores`` are imported, never a private module (the benchmarks
    and tests may reach inside; the one file exception above may not either)."""
    wrong = {str(path.relative_to(ROOT)): sorted(found)
             for package in PACKAGES if package != "checkpoint"
             for path in (ROOT / package).rglob("*.py")
             if (found := _private_imports(path, "checkpoint"))}
    assert wrong == {}
