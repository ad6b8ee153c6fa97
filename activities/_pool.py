"""The worker's side of task processes: start, reuse, talk to, stop and kill them.

``ProcessPool`` bounds how many tasks run at once (``max_tasks``) and keeps the
processes of finished tasks warm for the next ones. ``TaskProcess.run`` sends one
attempt to its process and relays what comes back (heartbeat details, checkpoint
events, the final checkpoint's acknowledgement) until the attempt ends: its result,
the user function's exception, or the process's death, which becomes an error
naming the exit code or signal and the last lines the process wrote.

Processes are started with ``posix_spawn``-style fork+exec of a fresh interpreter
(never a bare ``fork`` of the multithreaded worker) and die with the worker:
``PR_SET_PDEATHSIG`` on Linux, and EOF on the control socket everywhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from activities._ipc import AsyncChannel, InitSpec, RunSpec, TaskError

log = logging.getLogger(__name__)

# The package root, so `python -m activities._child` runs this very code.
_ROOT = str(Path(__file__).resolve().parent.parent)
TAIL_LINES = 20
START_TIMEOUT = 120.0
EXIT_FENCED = 75  # activities._child.EXIT_FENCED (not imported: that module is the child's)


@dataclass
class AttemptEvents:
    """Callbacks for what a running attempt reports (all on the event loop)."""

    beat: Callable[[dict[str, Any]], None]
    observe: Callable[[str, tuple[Any, ...]], None]
    final_done: Callable[[bool], None] = field(default=lambda ok: None)


class TaskProcess:
    """One child process and its control channel."""

    def __init__(self, proc: asyncio.subprocess.Process, chan: AsyncChannel) -> None:
        self.proc, self.chan = proc, chan
        self.pid = proc.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump = asyncio.get_running_loop().create_task(self._forward_output())
        self.reusable = True

    @classmethod
    async def start(cls, init: InitSpec) -> TaskProcess:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # what a task printed just before it crashed is kept
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "activities._child", str(theirs.fileno()), str(os.getpid()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        finally:
            theirs.close()
        child = cls(proc, await AsyncChannel.open(ours))
        child.chan.send("init", init)
        try:
            msg = await asyncio.wait_for(child.chan.recv(), START_TIMEOUT)
        except TimeoutError:
            msg = None
        if msg is None or msg[0] != "ready":
            await child.kill()
            raise RuntimeError(f"task process did not start: {child.describe_exit()}")
        return child

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
        return self.proc.returncode is None

    async def run(self, spec: RunSpec, events: AttemptEvents,
                  stop_grace: Callable[[], float]) -> str | bytes:
        """Run one attempt; its encoded result, or raise what ended it.

        Cancelling this coroutine asks the child to stop and kills it when it has
        not ended ``stop_grace()`` seconds later; the cancellation then propagates.
        """
        self.chan.send("run", spec)
        reading = asyncio.get_running_loop().create_task(self._relay(spec, events, stop_grace()))
        try:
            return await asyncio.shield(reading)
        except asyncio.CancelledError:
            if not reading.done():
                self.chan.send("stop")
                await self._end_within(reading, stop_grace())
            raise

    async def _end_within(self, reading: asyncio.Task[str | bytes], grace: float) -> None:
        await asyncio.wait({reading}, timeout=grace)
        if not reading.done():
            log.warning("task process %d did not stop within %.1f s; killing it", self.pid, grace)
            await self.kill()
            await asyncio.wait({reading})
        if not reading.cancelled():
            reading.exception()  # retrieved: the attempt is being cancelled anyway

    async def _relay(self, spec: RunSpec, events: AttemptEvents, stop_grace: float) -> str | bytes:
        fenced = False
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.chan.recv()
            if msg is None:
                await self._wait_exit()
                if fenced or self.proc.returncode == EXIT_FENCED:
                    raise _fenced_error(spec)
                raise ApplicationError(
                    f"task {spec.task_id} attempt {spec.attempt}: its process (pid {self.pid}) "
                    f"{self.describe_exit()}", type="TaskProcessDied")
            op = msg[0]
            if op == "beat":
                details = msg[1]
                # A beat sent as the previous task ended may arrive after its result.
                if (details.get("task_id"), details.get("attempt")) == (spec.task_id, spec.attempt):
                    events.beat(details)
            elif op == "observe":
                events.observe(msg[1], msg[2])
            elif op == "final_done":
                events.final_done(msg[1])
            elif op == "fenced":
                fenced = True
                loop.call_later(stop_grace, self._kill_if_busy)
            elif op == "done":
                if fenced:
                    raise _fenced_error(spec)
                done: str | bytes = msg[1]
                return done
            elif op == "error":
                raise _fenced_error(spec) if fenced else _raised(msg[1])

    def _kill_if_busy(self) -> None:
        if self.alive and self.reusable:
            self.reusable = False
            self.proc.kill()

    async def _wait_exit(self) -> None:
        self.reusable = False
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._pump  # the last lines it wrote

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
        if self.alive:
            self.proc.kill()
        await self.proc.wait()
        self.chan.close()
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
    """At most ``size`` task processes running tasks; idle ones are kept warm."""

    def __init__(self, size: int, init: Callable[[], InitSpec]) -> None:
        self.size = size
        self._init = init
        self._slots = asyncio.Semaphore(size)
        self._idle: list[TaskProcess] = []
        self._all: set[TaskProcess] = set()
        self._closed = False

    async def acquire(self) -> TaskProcess:
        """A warm or new process; waits while ``size`` tasks are running."""
        await self._slots.acquire()
        try:
            if self._closed:
                raise RuntimeError("the worker is stopping; the task is retried elsewhere")
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
                self._all.discard(child)
                await child.kill()  # died while idle: reap it, close its channel
            child = await TaskProcess.start(self._init())
        except BaseException:
            self._slots.release()
            raise
        self._all.add(child)
        return child

    async def release(self, child: TaskProcess) -> None:
        """Back to the idle list if it may run another task, else killed."""
        try:
            if child.reusable and child.alive:
                self._idle.append(child)
            else:
                self._all.discard(child)
                await child.kill()
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Kill every process (the worker is stopping)."""
        self._closed = True
        children, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(c.kill() for c in children), return_exceptions=True)
