"""The process a task's user function runs in (``python -m activities._child FD PPID``).

A worker starts these on demand and reuses a warm one for its next task. The main
thread runs one task at a time; a reader thread takes the worker's stop / final
requests; a reporter thread sends the task's heartbeat details (progress, the last
committed checkpoint) every heartbeat interval and polls for forced checkpoints.
Checkpoints are captured, encoded, stored and committed here, with this process's
own :class:`~checkpoint.CheckpointManager`, so no state crosses the process
boundary. Between two tasks :func:`_reset` puts back what isolation needs (see
the README's "Task isolation"): RNGs reseeded from fresh entropy, environment,
cwd, ``sys.path`` and torch's thread count restored. Module globals are not reset.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activities._ipc import BlockingChannel, InitSpec, RunSpec, TaskError
from activities._runtime import TaskRuntime
from activities._torchwatch import torch_default_threads, watch_torch_import
from sdk._task import CheckpointSession, TaskContext, bind, unbind

if TYPE_CHECKING:
    from activities.checkpointing import CheckpointService, TaskCheckpointSession

log = logging.getLogger("crowdcompute.task_process")

# Exit status of a child that stopped itself because a newer attempt fenced it.
EXIT_FENCED = 75
# A task that grew the process by more than this is followed by a garbage collection
# and a heap trim; below it (most small tasks) neither is paid.
RELEASE_GROWTH = 32 << 20
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the worker dies (Linux), and exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


@dataclass
class _Baseline:
    """What a fresh child looked like; restored after every task."""

    environ: dict[str, str]
    cwd: str
    sys_path: list[str]
    # Resident bytes after the last memory release: a task that leaves the process
    # RELEASE_GROWTH above it gets its memory given back (``_release_memory``).
    rss_mark: int = 0

    @classmethod
    def capture(cls) -> _Baseline:
        return cls(dict(os.environ), os.getcwd(), list(sys.path), resident_bytes())


@dataclass
class _Run:
    """The task this child is running now."""

    spec: RunSpec
    ctx: TaskContext
    session: TaskCheckpointSession | None = None
    fenced_reported: bool = False
    stop_requested: float | None = None


class ChildProcess:
    """One task process: its channel, the current run and the checkpoint service."""

    def __init__(self, chan: BlockingChannel, init: InitSpec) -> None:
        self.chan = chan
        self.settings = TaskRuntime.from_dict(init.settings)
        self.baseline = _Baseline.capture()
        self.current: _Run | None = None
        self._runs: list[RunSpec] = []
        self._wake = threading.Condition()
        self._service: CheckpointService | None = None

    # -- threads ---------------------------------------------------------------------

    def read_loop(self) -> None:
        """Worker requests; EOF means the worker is gone, so this process goes too."""
        while (msg := self.chan.recv()) is not None:
            op = msg[0]
            if op == "run":
                with self._wake:
                    self._runs.append(msg[1])
                    self._wake.notify()
            elif op == "stop":
                self._stop()
            elif op == "final":
                self._final()
        os._exit(0)

    def report_loop(self) -> None:
        """Heartbeat details every interval while a task runs; stop a fenced attempt."""
        interval = self.settings.heartbeat_interval
        while True:
            time.sleep(interval / 2)
            run = self.current
            if run is None:
                continue
            try:
                self.chan.send("beat", run.ctx.heartbeat_details())
            except OSError:
                os._exit(0)
            if run.session is not None and run.session.fenced and not run.fenced_reported:
                run.fenced_reported = True
                self.chan.send("fenced")
                self._stop()
            self._kill_if_overdue(run)

    def _stop(self) -> None:
        run = self.current
        if run is not None and run.stop_requested is None:
            run.stop_requested = time.monotonic()
            run.ctx._cancelled.set()

    def _kill_if_overdue(self, run: _Run) -> None:
        # The worker kills a stopped attempt after the grace period too; this covers a
        # fenced attempt whose worker is frozen or gone.
        grace = self.settings.task_stop_grace_seconds
        if run.stop_requested is not None and time.monotonic() - run.stop_requested > grace:
            if run.fenced_reported:
                log.warning("task %s attempt %d was fenced by a newer attempt and did not "
                            "stop within %.1f s; exiting", run.spec.task_id, run.spec.attempt,
                            grace)
                _flush_and_exit(EXIT_FENCED)

    def _final(self) -> None:
        run = self.current
        session = run.session if run is not None else None
        if session is None:
            self.chan.send("final_done", False)
            return
        session.request_final()
        grace = self.settings.shutdown_grace_seconds

        def wait() -> None:
            self.chan.send("final_done", session.wait_final(grace))

        threading.Thread(target=wait, daemon=True, name="final-checkpoint").start()

    # -- the main thread -------------------------------------------------------------

    def serve(self) -> None:
        while True:
            with self._wake:
                while not self._runs:
                    self._wake.wait()
                spec = self._runs.pop(0)
            # From here a death of this process is the attempt's; before it, the worker
            # gives the attempt to another process (what the last task left may kill it).
            self.chan.send("started", spec.task_id, spec.attempt)
            self.run(spec)
            _reset(self.baseline)

    def run(self, spec: RunSpec) -> None:
        ctx = TaskContext(spec.job_id, spec.task_id, spec.index, spec.attempt)
        run = _Run(spec, ctx)
        token = bind(ctx)
        succeeded = False
        try:
            from activities._resolve import resolve_function

            fn = resolve_function(spec.fn)
            item = _decode_item(spec)
            if spec.checkpoint_interval is not None or spec.checkpoint_every_steps is not None:
                run.session = self._open_session(ctx, spec)
                ctx.session = run.session
            self.current = run
            result = asyncio.run(fn(item)) if inspect.iscoroutinefunction(fn) else fn(item)
            encoded = _encode_result(spec, result)
            succeeded = True
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the worker
            self._close_session(run, succeeded=False)
            self.current = None
            unbind(token)
            self.chan.send("error", _task_error(exc))
            return
        self._close_session(run, succeeded=succeeded)
        self.current = None
        unbind(token)
        self.chan.send("done", encoded)

    def _open_session(self, ctx: TaskContext, spec: RunSpec) -> TaskCheckpointSession:
        from activities.checkpointing import CheckpointService, TaskCheckpointSession

        if self._service is None:
            self._service = CheckpointService(
                self.settings.open_manager(), memory_budget=self.settings.checkpoint_memory_budget,
                observer=_ForwardingObserver(self.chan))
        svc = self._service
        session = TaskCheckpointSession(
            svc.manager, ctx, interval=spec.checkpoint_interval,
            every_steps=spec.checkpoint_every_steps, max_age=spec.max_checkpoint_age,
            memory_budget=svc.memory_budget, observer=svc.observer, keep=spec.keep,
            warm_start_from=spec.warm_start_from)
        session.start(spec.hinted_seq, spec.hinted_catalog, fresh=spec.fresh)
        return session

    def _close_session(self, run: _Run, *, succeeded: bool) -> None:
        session: CheckpointSession | None = run.session
        if session is None:
            return
        try:
            # Waits for the in-flight commit: once the worker records the result no
            # commit of this attempt may land.
            asyncio.run(session.close(succeeded=succeeded))
        except Exception:
            log.exception("task %s: closing its checkpoint session failed", run.spec.task_id)


class _ForwardingObserver:
    """Checkpoint events go to the worker, whose metrics endpoint exports them."""

    def __init__(self, chan: BlockingChannel) -> None:
        self._chan = chan

    def __getattr__(self, method: str) -> Any:
        if method not in ("captured", "committed", "skipped", "fenced", "restored"):
            raise AttributeError(method)

        def forward(*args: Any) -> None:
            try:
                self._chan.send("observe", method, args)
            except OSError:
                pass

        return forward


def _decode_item(spec: RunSpec) -> Any:
    from temporalio.api.common.v1 import Payload
    from temporalio.exceptions import ApplicationError

    from sdk import _codec, _values

    try:
        if spec.item is None:
            return _codec.decode_value(spec.payload)
        return _values.decode_value(Payload.FromString(spec.item))
    except Exception as exc:
        raise ApplicationError(f"cannot decode item {spec.index}: {type(exc).__name__}: {exc}",
                               type="BadTaskInput", non_retryable=True) from exc


def _encode_result(spec: RunSpec, result: Any) -> str | bytes:
    """The result as the worker returns it: a payload, or a base64 pickle (first format)."""
    from temporalio.exceptions import ApplicationError

    from sdk import _codec, _values

    try:
        if spec.item is None:
            return _codec.encode_value(result)
        return _values.encode_value(result).SerializeToString()
    except Exception as exc:
        raise ApplicationError(
            f"result of task {spec.task_id} cannot be pickled: {type(exc).__name__}: {exc}",
            type="UnpicklableResult", non_retryable=True) from exc


def _task_error(exc: BaseException) -> TaskError:
    from temporalio.exceptions import ApplicationError

    tb = "".join(traceback.format_exception(exc))
    if isinstance(exc, ApplicationError):
        return TaskError(exc.type or "Error", exc.message, tb, exc.non_retryable,
                         _picklable(list(exc.details)))
    return TaskError(type(exc).__name__, str(exc), tb)


def _picklable(values: list[Any]) -> list[Any]:
    import pickle

    try:
        pickle.dumps(values)
    except Exception:
        return [repr(v) for v in values]
    return values


def _reset(baseline: _Baseline) -> None:
    """Between tasks: what a fresh process would have (module globals excepted)."""
    from activities import _rng

    if resident_bytes() - baseline.rss_mark > RELEASE_GROWTH:
        _release_memory()
        baseline.rss_mark = resident_bytes()
    _rng.reseed_all()
    if os.environ != baseline.environ:
        os.environ.clear()
        os.environ.update(baseline.environ)
    if os.getcwd() != baseline.cwd:
        os.chdir(baseline.cwd)
    if sys.path != baseline.sys_path:
        sys.path[:] = baseline.sys_path
    threads = torch_default_threads()
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release_memory() -> None:
    """Give back what the finished task left: its garbage (a checkpoint session's
    buffers sit in reference cycles, freed only when the collector runs, which an idle
    process may not do for a long time) and the freed heap (``malloc_trim``, glibc).

    Without this a warm process grew by two to three times the state per checkpointed
    task (101 MB W1: 731 MB after the first task, 1,929 MB after the sixth; with it,
    1,018–1,026 MB from the second on).
    """
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (AttributeError, OSError):  # not glibc
            pass


def _flush_and_exit(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _configure(init: InitSpec) -> None:
    sys.path[:] = init.sys_path
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("checkpoint", "crowdcompute", "activities", "worker_app"):
        logging.getLogger(name).setLevel(logging.INFO)
    if init.memory_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (init.memory_limit, init.memory_limit))
    # The worker owns shutdown (final checkpoints, then stopping its children); a
    # Ctrl-C that reaches the whole process group must not kill a task mid-step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, parent_pid = int(argv[0]), int(argv[1])
    die_with_parent(parent_pid)
    import faulthandler

    # A crash prints the crashing thread's stack, which the worker reports in its error.
    faulthandler.enable(all_threads=False)
    watch_torch_import()
    chan = BlockingChannel(socket.socket(fileno=fd))
    msg = chan.recv()
    if msg is None or msg[0] != "init":
        os._exit(0)
    init: InitSpec = msg[1]
    _configure(init)
    child = ChildProcess(chan, init)
    threading.Thread(target=child.read_loop, daemon=True, name="control").start()
    threading.Thread(target=child.report_loop, daemon=True, name="reporter").start()
    random.seed()
    chan.send("ready", os.getpid())
    child.serve()


if __name__ == "__main__":
    main()
