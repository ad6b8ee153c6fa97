"""Bounds on every test: its coroutine, then the whole test.

A coroutine test is cancelled ``ASYNC_LEAD`` seconds before pytest-timeout's
limit (``asyncio.timeout``): its ``finally`` blocks and its fixtures' teardowns
then run as after any failure, and the traceback names the await it hung in.
pytest-timeout's own interrupt is a signal raised wherever the event loop is,
which can leave a worker running in that loop unable to shut down.

A hard bound on every test, setup and teardown included, comes after that.

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
import functools
import gc
import inspect
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

#: A coroutine test is cancelled this long before pytest-timeout's limit.
ASYNC_LEAD = 60.0
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


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 0)


def _bounded(test: Callable[..., Coroutine[Any, Any, Any]], seconds: float
             ) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        bound = asyncio.timeout(seconds)
        try:
            async with bound:
                return await test(*args, **kwargs)
        except TimeoutError as exc:
            if not bound.expired():
                raise  # the test's own (a wait_for that gave up), not the bound
            raise TimeoutError(f"the test's coroutine ran past {seconds:.0f} s "
                               "(cancelled before pytest-timeout's limit)") from exc
    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    limit = _limit(item)
    test = getattr(item, "obj", None)
    if limit <= 0 or not inspect.iscoroutinefunction(test):
        yield
        return
    # pytest-asyncio runs whatever ``item.obj`` is when the call starts.
    item.obj = _bounded(test, limit - min(ASYNC_LEAD, limit / 2))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        item.obj = test  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    limit = _limit(item)
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
