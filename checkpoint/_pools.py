"""The library's thread pools and their CPU priority, in one place.

* the *codec pool* (``codec_pool``, ``pmap``): encoding and compression of
  parts, one worker per core up to 8, at background priority;
* the *restore pool* (``restore_pool``): decoding of parts, one worker per
  core up to 8, at normal priority: whoever restores waits for it, and on a
  busy machine background threads would get a fraction of a core;
* the *fetch pool* (``fetch_pool``): up to 8 threads that fetch and check
  the parts of the links being restored a few ahead of the decoder (an object
  store answers each GET in tens of milliseconds, so they mostly wait), at
  normal priority like the restore pool;
* the *copy helpers* (``copy_helpers``): up to 3 threads that help the task's
  own thread copy a large capture; they run at normal priority because the
  caller is paused while they work.

Pools are made on first use and live as long as the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = [
    "BACKGROUND_NICE", "CORE_THREADS", "FETCH_THREADS", "codec_pool", "copy_helpers", "fetch_pool", "lower_thread_priority", "pmap",
    "restore_pool", "width",
]

BACKGROUND_NICE = 10
FETCH_THREADS = 8
#: threads of the codec and restore pools: one per core, at most 8
CORE_THREADS = min(8, os.cpu_count() or 1)
_executor: ThreadPoolExecutor | None = None
_restore: ThreadPoolExecutor | None = None
_fetch: ThreadPoolExecutor | None = None
_copy_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def lower_thread_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice).

    Encoding and storing a checkpoint run behind the task's own threads: when
    the cores are busy the training loop should win, and the checkpoint take the
    CPU that is left. Elsewhere this does nothing.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       max(current, BACKGROUND_NICE))
    except (AttributeError, OSError):
        pass


def codec_pool() -> ThreadPoolExecutor:
    """The shared pool that encodes and decodes parts (background priority)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=CORE_THREADS,
                                       thread_name_prefix="ckpt-codec",
                                       initializer=lower_thread_priority)
    return _executor


def restore_pool() -> ThreadPoolExecutor:
    """The shared pool that decodes parts (normal priority)."""
    global _restore
    with _helpers_lock:
        if _restore is None:
            _restore = ThreadPoolExecutor(max_workers=CORE_THREADS,
                                          thread_name_prefix="ckpt-decode")
        return _restore


def fetch_pool() -> ThreadPoolExecutor:
    """The shared pool that fetches and checks the parts of links being restored.

    One pool for every link and every restore: a pool per link started its
    threads anew for each of a chain's links.
    """
    global _fetch
    with _helpers_lock:
        if _fetch is None:
            _fetch = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="ckpt-fetch")
        return _fetch


def width(pool: ThreadPoolExecutor) -> int:
    """How many threads ``pool`` may run at once."""
    return int(pool._max_workers)  # the executor keeps its bound private


def pmap(fn: Callable[[Any], Any], items: Sequence[Any], threads: int | None = None) -> list[Any]:
    """``fn`` over ``items`` on the codec pool, in order, on at most ``threads`` of its threads."""
    pool = codec_pool()
    if threads is None or threads >= width(pool) or len(items) <= 1:
        return list(pool.map(fn, items))
    groups = list(pool.map(lambda k: [fn(x) for x in items[k::threads]], range(threads)))
    out: list[Any] = [None] * len(items)
    for k, results in enumerate(groups):
        out[k::threads] = results
    return out


def copy_helpers() -> ThreadPoolExecutor | None:
    """Threads that help capture copy leaves on the other cores; None on one core."""
    global _copy_helpers
    extra = min(3, (os.cpu_count() or 1) - 1)
    if extra < 1:
        return None
    with _helpers_lock:
        if _copy_helpers is None:
            _copy_helpers = ThreadPoolExecutor(max_workers=extra, thread_name_prefix="ckpt-capture")
        return _copy_helpers
