"""A hard bound on every test, setup and teardown included.

pytest-timeout's timer fires once: a test whose call ran out its time can then
hang in a fixture's teardown with no limit (``faulthandler_timeout`` is no help
either: pytest cancels it as soon as a test fails), and the run goes on until
the CI's own limit kills it, printing nothing. This plugin arms a second bound
per test, ``GRACE`` seconds after pytest-timeout's: it prints every asyncio
task's stack and every thread's stack, then ends the process, so a hang fails
the run in bounded time and says where.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import sys
import threading
from collections.abc import Iterator

import pytest

#: Seconds past pytest-timeout's limit: its interrupt gets the first chance.
GRACE = float(os.environ.get("CROWDCOMPUTE_TEST_WATCHDOG_GRACE", "240"))


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    # The loop belongs to the stuck thread; found from here through the heap.
    return [o for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def _give_up(config: pytest.Config, nodeid: str, bound: float) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    err = sys.stderr
    # Threads first, the asyncio tasks last: a CI log's tail is what gets read.
    faulthandler.dump_traceback(file=err, all_threads=True)
    print(f"\n=== watchdog: {nodeid} still running {bound:.0f} s after it started "
          "(setup, call and teardown); its asyncio tasks ===", file=err)
    for loop in _running_loops():
        for task in list(asyncio.all_tasks(loop)):
            print(f"--- {task!r}", file=err)
            task.print_stack(limit=15, file=err)
    print(f"=== watchdog: ended the run ({nodeid} hung) ===", file=err)
    err.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 0)
    if limit <= 0:
        yield
        return
    bound = limit + GRACE
    timer = threading.Timer(bound, _give_up, args=(item.config, item.nodeid, bound))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
