"""Record torch's default thread count the moment torch is first imported.

A reused task process restores ``torch.set_num_threads`` to what a fresh process
would have. That default depends on the machine, the environment and torch's
build, so it is read from torch itself right after its import finished, before
any task code could change it, without importing torch in processes that never do.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

_default_threads: list[int] = []


def torch_default_threads() -> int | None:
    """torch's thread count right after its import in this process, if imported."""
    return _default_threads[0] if _default_threads else None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _default_threads[:] = [module.get_num_threads()]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def watch_torch_import() -> None:
    """Install the hook (once, before any task runs)."""
    if "torch" in sys.modules:
        _default_threads[:] = [sys.modules["torch"].get_num_threads()]
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
