"""The worker's side of task processes: start, reuse, talk to, stop and kill them.

``ProcessPool`` bounds how many tasks run at once (``size``) and keeps the
processes of finished tasks warm for the next ones. ``ProcessPool.run`` queues one
attempt, hands it to a free process and relays what comes back (heartbeat details,
checkpoint events, the final checkpoint's acknowledgement) until the attempt ends:
its result, the user function's exception, or the process's death, which becomes an
error naming the exit code or signal and the last lines the process wrote.

Messages from a process are handled in the event loop's read callback itself, and
an attempt that ends there hands its process to the next waiting attempt in that
same callback: a process never waits for the finished attempt's coroutine, the
semaphore and the waiter's wake-up (several loop iterations, each of which may
wait for the GIL behind a workflow activation). For tiny tasks that handover was
most of a task's cost.

Processes are started with fork+exec of a fresh interpreter (never a bare ``fork``
of the multithreaded worker) and die with the worker: ``PR_SET_PDEATHSIG`` on
Linux, and EOF on the control socket everywhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from activities._ipc import HEADER, InitSpec, RunSpec, TaskError, encode

log = logging.getLogger(__name__)

# The package root, so `python -m activities._child` runs this very code.
_ROOT = str(Path(__file__).resolve().parent.parent)
TAIL_LINES = 20
START_TIMEOUT = 120.0
EXIT_FENCED = 75  # activities._child.EXIT_FENCED (not imported: that module is the child's)
# How often an attempt whose process died before it began goes to another process.
HAND_ON = 1
# glibc's allocator in task processes (unless the worker's environment sets these): a
# fixed mmap threshold at its maximum and a high trim threshold, so a training loop's
# per-step tensors below 32 MiB reuse heap memory instead of being mapped, faulted in
# and unmapped again every step. With glibc's dynamic defaults, what the threshold was
# depended on the process's history, and a job ran at one of two speeds: a 101 MB W1
# job faulted 110k-365k pages (0.3-0.9 s of system time, up to 25 % slower) against
# ~90k with these. The reset between tasks trims the heap (``_child._release_memory``).
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclass
class AttemptEvents:
    """Callbacks for what a running attempt reports (all on the event loop)."""

    beat: Callable[[dict[str, Any]], None]
    observe: Callable[[str, tuple[Any, ...]], None]
    final_done: Callable[[bool], None] = field(default=lambda ok: None)


@dataclass(eq=False)
class Assignment:
    """One attempt on its way through the pool: queued, then run by one process."""

    spec: RunSpec
    events: AttemptEvents
    stop_grace: Callable[[], float]
    on_dispatch: Callable[[Assignment], None]
    result: asyncio.Future[str | bytes]
    child: TaskProcess | None = None
    fenced: bool = False
    started: bool = False   # its process said it began the attempt
    stopping: bool = False  # asked to stop (cancelled): never handed on
    handed_on: int = 0      # times a process died with it before it began

    def send(self, *msg: Any) -> bool:
        """Send ``msg`` to this attempt's process; False when it has none (any more)."""
        child = self.child
        if child is None or child.current is not self:
            return False
        child.send(*msg)
        return True

    def finish(self, result: str | bytes | None = None,
               error: BaseException | None = None) -> None:
        if self.result.done():
            return
        if error is not None:
            self.result.set_exception(error)
        else:
            assert result is not None
            self.result.set_result(result)


class _Channel(asyncio.Protocol):
    """Length-prefixed pickles (``activities._ipc``), each handed to ``on_message``
    as soon as it is complete, in the read callback."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None],
                 on_eof: Callable[[], None]) -> None:
        self._on_message, self._on_eof = on_message, on_eof
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        while len(buf) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, start)
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            msg = pickle.loads(memoryview(buf)[start + HEADER.size:end])  # noqa: S301 - our child
            start = end
            self._on_message(msg)
        del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_eof()

    def send(self, *msg: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TaskProcess:
    """One child process, its control channel and the attempt it runs (``current``)."""

    def __init__(self, proc: asyncio.subprocess.Process, pool: ProcessPool) -> None:
        self.proc, self.pool = proc, pool
        self.pid = proc.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        loop = asyncio.get_running_loop()
        self._pump = loop.create_task(self._forward_output())
        self._ready: asyncio.Future[bool] = loop.create_future()
        self._channel = _Channel(self._on_message, self._on_eof)
        self.current: Assignment | None = None
        self.reusable = True
        self.gone = False  # EOF seen: the pool has forgotten this process
        # Checkpoint events after an attempt's result (none expected) still count.
        self._observe: Callable[[str, tuple[Any, ...]], None] = lambda m, a: None

    @classmethod
    async def start(cls, init: InitSpec, pool: ProcessPool) -> TaskProcess:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # what a task printed just before it crashed is kept
        for name, value in MALLOC_TUNING.items():
            env.setdefault(name, value)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "activities._child", str(theirs.fileno()), str(os.getpid()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        finally:
            theirs.close()
        child = cls(proc, pool)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: child._channel, ours)
        child.send("init", init)
        try:
            ready = await asyncio.wait_for(asyncio.shield(child._ready), START_TIMEOUT)
        except TimeoutError:
            ready = False
        if not ready:
            await child.kill()
            raise RuntimeError(f"task process did not start: {child.describe_exit()}")
        return child

    def send(self, *msg: Any) -> None:
        self._channel.send(*msg)

    async def _forward_output(self) -> None:
        """Copy the child's output to the worker's stderr and keep its last lines."""
        assert self.proc.stdout is not None
        partial = ""
        while chunk := await self.proc.stdout.read(65536):
            text = chunk.decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            lines = (partial + text).split("\n")
            partial = lines.pop()
            self.tail.extend(lines)
        if partial:
            self.tail.append(partial)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.gone

    def dispatch(self, a: Assignment) -> None:
        """Start attempt ``a`` on this (idle) process."""
        self.current, a.child = a, self
        self._observe = a.events.observe
        self.send("run", a.spec)
        a.on_dispatch(a)

    # -- messages, in the read callback ------------------------------------------------

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        op, a = msg[0], self.current
        if op == "ready":
            if not self._ready.done():
                self._ready.set_result(True)
        elif op == "observe":
            self._observe(msg[1], msg[2])
        elif a is None:
            return  # a beat sent as the previous task ended
        elif op == "started":
            a.started = True
        elif op == "beat":
            details = msg[1]
            if (details.get("task_id"), details.get("attempt")) == (a.spec.task_id,
                                                                    a.spec.attempt):
                a.events.beat(details)
        elif op == "final_done":
            a.events.final_done(msg[1])
        elif op == "fenced":
            a.fenced = True
            asyncio.get_running_loop().call_later(a.stop_grace(), self._kill_if_running, a)
        elif op in ("done", "error"):
            self.current = None
            if a.fenced:
                a.finish(error=_fenced_error(a.spec))
            elif op == "done":
                a.finish(msg[1])
            else:
                a.finish(error=_raised(msg[1]))
            self.pool.freed(self)

    def _on_eof(self) -> None:
        if self.gone:
            return
        self.gone, self.reusable = True, False
        if not self._ready.done():
            self._ready.set_result(False)
        asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """The process closed its end: wait for its exit, fail its attempt, free its slot."""
        await self._wait_exit()
        a, self.current = self.current, None
        if a is not None and not (a.started or a.fenced or a.stopping or a.result.done()) \
                and a.handed_on < HAND_ON and not self.pool.closed:
            # Taken as the last task ended, never begun: the death is that task's
            # aftermath (a finalizer, a late kill), not this attempt's.
            log.warning("task process %d %s before task %s attempt %d began; another "
                        "process runs it", self.pid, self.describe_exit(), a.spec.task_id,
                        a.spec.attempt)
            a.handed_on += 1
            a.child = None
            self._channel.close()
            self.pool.hand_on(a)
            self.pool.gone(self, held_slot=True)
            return
        if a is not None:
            if a.fenced or self.proc.returncode == EXIT_FENCED:
                a.finish(error=_fenced_error(a.spec))
            else:
                a.finish(error=ApplicationError(
                    f"task {a.spec.task_id} attempt {a.spec.attempt}: its process (pid "
                    f"{self.pid}) {self.describe_exit()}", type="TaskProcessDied"))
        self._channel.close()
        self.pool.gone(self, held_slot=a is not None)

    def _kill_if_running(self, a: Assignment) -> None:
        """A fenced attempt still running after the grace period is killed."""
        if self.current is a and self.proc.returncode is None:
            self.reusable = False
            self.proc.kill()

    async def _wait_exit(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._pump  # the last lines it wrote

    # -- stopping ----------------------------------------------------------------------

    async def stop(self, a: Assignment) -> None:
        """Ask attempt ``a`` to stop; kill the process when it has not ended within the
        attempt's grace period."""
        a.stopping = True
        if not a.send("stop"):
            return
        grace = a.stop_grace()
        await asyncio.wait({a.result}, timeout=grace)
        if not a.result.done():
            log.warning("task process %d did not stop within %.1f s; killing it", self.pid,
                        grace)
            self.reusable = False
            if self.proc.returncode is None:
                self.proc.kill()
            await asyncio.wait({a.result})

    def describe_exit(self) -> str:
        code = self.proc.returncode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "?"
            how = f"was killed by signal {-code} ({name})"
            if -code == signal.SIGKILL:
                how += " (the kernel's out-of-memory killer sends it too)"
        else:
            how = f"exited with code {code}"
        tail = "\n".join(line for line in self.tail if line.strip())
        return how + (f"; its last output:\n{tail}" if tail else "; it wrote nothing")

    async def kill(self) -> None:
        self.reusable = False
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        self._channel.close()
        await self._pump


def _fenced_error(spec: RunSpec) -> ApplicationError:
    return ApplicationError(
        f"task {spec.task_id} attempt {spec.attempt} was stopped: a newer attempt of the task "
        "fenced its checkpoints", type="AttemptFenced")


def _raised(err: TaskError) -> ApplicationError:
    # Temporal reports a plain exception by its class name and message; so does this.
    log.warning("task failed in its process:\n%s", err.traceback.rstrip())
    return ApplicationError(err.message, *err.details, type=err.type,
                            non_retryable=err.non_retryable)


class ProcessPool:
    """At most ``size`` task processes running tasks; idle ones are kept warm.

    A slot is held by each process running an attempt and each one being started;
    attempts beyond ``size`` wait in order.
    """

    def __init__(self, size: int, init: Callable[[], InitSpec]) -> None:
        self.size = size
        self._init = init
        self._held = 0
        self._idle: list[TaskProcess] = []
        self._all: set[TaskProcess] = set()
        self._waiting: collections.deque[Assignment] = collections.deque()
        self._closed = False

    async def run(self, spec: RunSpec, events: AttemptEvents, stop_grace: Callable[[], float],
                  on_dispatch: Callable[[Assignment], None] = lambda a: None) -> str | bytes:
        """Run one attempt in a task process; its encoded result, or raise what ended it.

        ``on_dispatch`` is called (in the event loop) when a process takes the attempt.
        Cancelling this coroutine drops a waiting attempt, or asks a running one's
        process to stop and kills it when it has not ended ``stop_grace()`` seconds
        later; the cancellation then propagates.
        """
        if self._closed:
            raise RuntimeError("the worker is stopping; the task is retried elsewhere")
        a = Assignment(spec, events, stop_grace, on_dispatch,
                       asyncio.get_running_loop().create_future())
        self._submit(a)
        try:
            return await asyncio.shield(a.result)
        except asyncio.CancelledError:
            if a.result.done():
                if not a.result.cancelled():
                    a.result.exception()  # retrieved: the attempt is being cancelled anyway
                raise
            if a.child is None:  # still waiting, or its process is starting
                if a in self._waiting:
                    self._waiting.remove(a)
                a.result.cancel()
                raise
            await a.child.stop(a)
            if not a.result.cancelled():
                a.result.exception()
            raise

    def _submit(self, a: Assignment) -> None:
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                self._held += 1
                child.dispatch(a)
                return
        if self._held < self.size:
            self._held += 1
            asyncio.get_running_loop().create_task(self._start_for(a))
        else:
            self._waiting.append(a)

    async def _start_for(self, a: Assignment) -> None:
        try:
            child = await TaskProcess.start(self._init(), self)
        except BaseException as exc:
            self._held -= 1
            a.finish(error=exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._start_next()
            if not isinstance(exc, Exception):
                raise
            return
        if self._closed:
            await child.kill()
            a.finish(error=RuntimeError("the worker is stopping; the task is retried elsewhere"))
            return
        self._all.add(child)
        if a.result.done():  # cancelled while its process started
            self.freed(child)
        else:
            child.dispatch(a)

    def _next_waiting(self) -> Assignment | None:
        while self._waiting:
            a = self._waiting.popleft()
            if not a.result.done():
                return a
        return None

    def freed(self, child: TaskProcess) -> None:
        """``child`` ended its attempt: it takes the next waiting one at once, or idles."""
        if child.reusable and child.alive and not self._closed:
            a = self._next_waiting()
            if a is not None:
                child.dispatch(a)
                return
            self._held -= 1
            self._idle.append(child)
            return
        self._held -= 1
        self._all.discard(child)
        asyncio.get_running_loop().create_task(child.kill())
        self._start_next()

    def gone(self, child: TaskProcess, *, held_slot: bool) -> None:
        """``child`` died (running an attempt when ``held_slot``, else idle)."""
        if child in self._all:
            self._all.discard(child)
            if held_slot:
                self._held -= 1
        if child in self._idle:
            self._idle.remove(child)
        self._start_next()

    @property
    def closed(self) -> bool:
        return self._closed

    def hand_on(self, a: Assignment) -> None:
        """Run ``a`` (dispatched, never begun: its process died) before the waiting ones."""
        if a.result.done():
            return
        self._waiting.appendleft(a)
        self._start_next()

    def _start_next(self) -> None:
        """A slot came free without a process to take the next attempt: start one."""
        if self._closed or self._held >= self.size:
            return
        a = self._next_waiting()
        if a is not None:
            self._held += 1
            asyncio.get_running_loop().create_task(self._start_for(a))

    async def close(self) -> None:
        """Kill every process (the worker is stopping); waiting attempts fail."""
        self._closed = True
        while (a := self._next_waiting()) is not None:
            a.finish(error=RuntimeError("the worker is stopping; the task is retried elsewhere"))
        children, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(c.kill() for c in children), return_exceptions=True)
