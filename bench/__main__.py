"""``python -m bench [--quick] [--json OUT] [NAME ...]``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
from pathlib import Path

from bench import MODULES, REGISTRY


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--json", type=Path, help="write all results to this file")
    p.add_argument("--tasks", type=int, help="tasks of the fanout benchmark")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = p.parse_args()
    for mod in MODULES:
        importlib.import_module(mod)
    if args.tasks:
        import bench.fanout

        bench.fanout.TASKS = args.tasks
    names = args.names or sorted(REGISTRY)
    results = {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = asyncio.run(REGISTRY[name](args.quick))
        print(json.dumps(results[name], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
