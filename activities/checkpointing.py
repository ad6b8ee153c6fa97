"""Checkpointing inside a running task: capture, background persist, resume.

``CheckpointService`` holds the manager; a task's process starts a
``TaskCheckpointSession`` per task attempt with it. The session implements the spec's
worker side (``CheckpointHandler``):

* ``checkpoint(state)`` is a clock read unless a checkpoint is due (the job's
  interval elapsed, ``every_steps`` calls were made since the last capture, or
  one was forced). ``state`` may be a zero-argument function, called only when
  due. Unless ``rng=False`` the process's global RNG states are captured with
  it and put back by ``restore()`` (see ``activities._rng``). A due call captures (a memory copy) in
  the caller's thread and hands encode + store + commit to one background
  thread. A due call while a checkpoint is still persisting is coalesced: it
  returns False and the next call after the persist finishes captures.
* Failures never fail the task: unpicklable state, a state over the memory
  budget and an unavailable store are logged with the ``CheckpointHandler:``
  prefix and skipped; earlier checkpoints stay valid.
* On attempt start the session takes a new fencing epoch and restores the
  newest committed checkpoint; a zombie attempt's later commits are fenced.
* ``checkpoint_files(path)`` adds a directory to every later capture: its
  changed files are read in the same pause as the state and committed with it.
  Restored files go to a temporary directory of the attempt
  (``restore_files()``), removed when the session closes.
* ``keep="final"``: when the task succeeds, the state offered to its last
  ``checkpoint()`` call is captured if that call did not capture, committed,
  and the task is marked kept, so the cleanup activities leave it. With
  ``warm_start_from=JOB``, an attempt with nothing of its own to restore starts
  from the kept final checkpoint of the same index in ``JOB`` (state, RNG
  states and files); none kept is a non-retryable ``WarmStartNotFound``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from checkpoint import lower_thread_priority
from checkpoint.errors import (
    CaptureError,
    CatalogMismatch,
    CheckpointError,
    Fenced,
    MemoryBudgetExceeded,
    StaleCapture,
    StorageFull,
)
from sdk._task import CheckpointSession, TaskContext

if TYPE_CHECKING:
    from checkpoint import CheckpointManager, CommitInfo, FileCapture, Restored, TaskWriter

log = logging.getLogger("crowdcompute.checkpoint_handler")

# How often a running task asks the catalog whether a checkpoint was forced.
FORCE_POLL_SECONDS = 1.0
# A checkpoint taken with the RNG states is {RNG_KEY: pickle of the states, "state": state}.
RNG_KEY = "__crowdcompute_rng__"
_LAZY_TYPES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)


class CheckpointObserver(Protocol):
    """Receives checkpoint events (the worker's Prometheus metrics implement it)."""

    def captured(self, pause_seconds: float) -> None: ...

    def committed(self, info: CommitInfo, duration_seconds: float, lag_seconds: float) -> None:
        """``duration``: capture start to commit; ``lag``: capture end to commit."""

    def skipped(self, reason: str) -> None: ...

    def fenced(self) -> None: ...

    def restored(self, truncated: bool) -> None: ...


class _NullObserver:
    def captured(self, pause_seconds: float) -> None:
        pass

    def committed(self, info: CommitInfo, duration_seconds: float, lag_seconds: float) -> None:
        pass

    def skipped(self, reason: str) -> None:
        pass

    def fenced(self) -> None:
        pass

    def restored(self, truncated: bool) -> None:
        pass


def default_memory_budget() -> int:
    """Half of the machine's physical memory, in bytes."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class TaskCheckpointSession(CheckpointSession):
    """Checkpointing of one attempt of one task (see the module docstring).

    Call order: ``start()`` (blocking: epoch + restore), then ``restore()`` /
    ``checkpoint()`` from the task's thread, ``heartbeat_details()`` from the
    heartbeat loop, ``close()`` once.
    """

    def __init__(self, manager: CheckpointManager, ctx: TaskContext, *, interval: float | None,
                 max_age: float | None, memory_budget: int | None,
                 observer: CheckpointObserver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 every_steps: int | None = None, keep: str = "none",
                 warm_start_from: str | None = None) -> None:
        self.manager, self.ctx = manager, ctx
        self.interval, self.max_age, self.memory_budget = interval, max_age, memory_budget
        self.every_steps = every_steps
        self._steps = 0  # checkpoint() calls since the last capture
        self.observer = observer or _NullObserver()
        self.clock = clock
        self.epoch = 0
        self.restored: Restored | None = None
        self.last_commit: CommitInfo | None = None
        self._writer: TaskWriter | None = None
        self._last_capture = clock()
        self._forced = threading.Event()
        self._final_requested = False
        self._final_done = threading.Event()
        self._fenced = False
        self._inflight: Future[CommitInfo | None] | None = None
        self._persister = ThreadPoolExecutor(1, thread_name_prefix=f"ckpt-{ctx.task_id}",
                                             initializer=lower_thread_priority)
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"ckpt-poll-{ctx.task_id}")
        self._poll: Future[None] | None = None
        self._last_poll = 0.0
        self._files_root: str | None = None
        self._restore_dir: str | None = None
        self.keep, self.warm_start_from = keep, warm_start_from
        self.warm_started = False
        # the last checkpoint() call's arguments while that call captured nothing
        self._uncaptured: tuple[Any, float | None, bool] | None = None
        self._prepared = False   # the first capture's buffers were planned (``_prepare``)

    # -- attempt start -------------------------------------------------------------------

    def start(self, hinted_seq: int | None = None, hinted_catalog: str | None = None, *,
              fresh: bool = False) -> None:
        """Take a new fencing epoch and restore the newest committed checkpoint.

        ``hinted_seq`` / ``hinted_catalog``: what the previous attempt's last
        heartbeat named. Raises CatalogMismatch when that attempt committed to
        another catalog (this one would restart the task from zero). ``fresh``:
        the task was asked to start over (see ``run_task``): its checkpoints
        are deleted instead of restored.
        """
        ctx = self.ctx
        mine = self.manager.catalog_id
        if hinted_catalog is not None and hinted_catalog != mine:
            url = self.manager.engine.url.render_as_string(hide_password=True)
            raise CatalogMismatch(
                f"task {ctx.task_id} attempt {ctx.attempt}: this worker's checkpoint catalog is "
                f"{mine} ({url}), but the task's earlier attempts committed to catalog "
                f"{hinted_catalog}; refusing to restart the task from zero. Point "
                "CROWDCOMPUTE_DATABASE_URL (or an absolute CROWDCOMPUTE_STATE_DIR) of every worker "
                "at the same catalog.")
        self._restore_dir = tempfile.mkdtemp(prefix="crowdcompute-files-")
        try:
            attempt = self.manager.open_attempt(ctx.job_id, ctx.task_id, ctx.attempt,
                                                max_age=self.max_age, files_dir=self._restore_dir)
            if fresh and attempt.restored is not None:
                log.info("CheckpointHandler: task %s starts over (reset with its heartbeat "
                         "details cleared): deleting its checkpoints up to seq %d", ctx.task_id,
                         attempt.restored.seq)
                self.manager.delete_task(ctx.task_id)
                # The files of what was restored go with it.
                self._remove_restore_dir()
                self._restore_dir = tempfile.mkdtemp(prefix="crowdcompute-files-")
                attempt = self.manager.open_attempt(ctx.job_id, ctx.task_id, ctx.attempt,
                                                    max_age=self.max_age,
                                                    files_dir=self._restore_dir)
        except BaseException:
            self._remove_restore_dir()
            raise
        self.epoch, self.restored, self._writer = attempt.epoch, attempt.restored, attempt.writer
        if self.restored is None and self.warm_start_from is not None:
            self._warm_start(self.warm_start_from)
        if self.restored is None or self.restored.files_dir is None:
            self._remove_restore_dir()
        if self.restored is not None:
            self.observer.restored(self.restored.truncated)
            log.info("CheckpointHandler: task %s attempt %d resumes from checkpoint seq %d "
                     "(%.1f s old)", ctx.task_id, ctx.attempt, self.restored.seq,
                     self.restored.age_seconds)
        restored_seq = self.restored.seq if self.restored is not None else 0
        if hinted_seq is not None and restored_seq < hinted_seq:
            # The heartbeat named a committed checkpoint newer than what restore found:
            # its chain was truncated, deleted as stale or is corrupt.
            log.warning("CheckpointHandler: task %s: the last heartbeat named checkpoint seq %d "
                        "but the newest restorable one is seq %d", ctx.task_id, hinted_seq,
                        restored_seq)
        self._last_capture = self.clock()

    def _warm_start(self, job_id: str) -> None:
        """Start from the kept final checkpoint of this index in ``job_id``, or fail."""
        from temporalio.exceptions import ApplicationError

        from workflows.models import task_id_for

        source = task_id_for(job_id, self.ctx.index)
        self.restored = self.manager.restore_kept(source, files_dir=self._restore_dir)
        if self.restored is None:
            self._remove_restore_dir()
            raise ApplicationError(
                f"task {self.ctx.task_id}: warm_start_from={job_id!r} but task {source} kept no "
                "final checkpoint (was that job run with keep='final', and did its task "
                f"{self.ctx.index} complete?)", type="WarmStartNotFound", non_retryable=True)
        self.warm_started = True
        log.info("CheckpointHandler: task %s starts from the kept final checkpoint of %s "
                 "(seq %d)", self.ctx.task_id, source, self.restored.seq)

    # -- in-task API ---------------------------------------------------------------------

    def restore(self) -> Any | None:
        if self.restored is None:
            return None
        state = self.restored.state
        if isinstance(state, dict) and state.keys() == {RNG_KEY, "state"}:
            from activities import _rng

            _rng.restore(pickle.loads(state[RNG_KEY]))  # noqa: S301 - hash-checked, ours
            return state["state"]
        return state

    def restore_files(self) -> str | None:
        return self.restored.files_dir if self.restored is not None else None

    def checkpoint_files(self, path: str) -> None:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"checkpoint_files: {path!r} is not a directory")
        self._files_root = os.path.abspath(path)

    def _remove_restore_dir(self) -> None:
        if self._restore_dir is not None:
            shutil.rmtree(self._restore_dir, ignore_errors=True)
            self._restore_dir = None

    @property
    def fenced(self) -> bool:
        """True once a newer attempt of this task rejected one of this attempt's commits."""
        return self._fenced

    def checkpoint_due(self) -> bool:
        if self._fenced or self._writer is None:
            return False
        if self._inflight is not None and not self._inflight.done():
            return False  # the next call would be coalesced
        return self._forced.is_set() or self._due(self.clock(), steps_ahead=1)

    def _due(self, now: float, steps_ahead: int, share: float = 1.0) -> bool:
        """Whether ``share`` of the interval (or of the steps) between checkpoints has passed."""
        by_time = self.interval is not None and now - self._last_capture >= share * self.interval
        by_steps = self.every_steps is not None and self._steps + steps_ahead >= share * self.every_steps
        return by_time or by_steps

    def _prepare(self, state: Any, rng: bool) -> None:
        """Once per attempt, halfway to its first checkpoint: make that capture's buffers
        on the persist thread, so that its pause is the copy alone.

        Halfway, so that a task that ends before its first checkpoint never
        holds them. A lazy state (a function) is not called for this.
        """
        self._prepared = True
        if self._fenced or self._writer is None or isinstance(state, _LAZY_TYPES):
            return
        wrapped = {RNG_KEY: b"", "state": state} if rng else state   # the paths capture will see
        try:
            job = self._writer.prepare(wrapped, max_bytes=self.memory_budget)
        except Exception as exc:   # an optimisation only: the capture reports real problems
            log.debug("CheckpointHandler: task %s: no buffers planned (%s)", self.ctx.task_id, exc)
            return
        if job is not None:
            self._persister.submit(self._run_prepare, job)

    def _run_prepare(self, job: Callable[[], int]) -> None:
        try:
            made = job()
        except (MemoryError, OSError) as exc:
            log.warning("CheckpointHandler: task %s: no capture buffers made ahead (%s)",
                        self.ctx.task_id, exc)
            return
        log.debug("CheckpointHandler: task %s: %d bytes of capture buffers made ahead",
                  self.ctx.task_id, made)

    def checkpoint(self, state: Any, progress_percent: float | None = None, *,
                   rng: bool = True) -> bool:
        now = self.clock()
        self._steps += 1
        offered = (state, progress_percent, rng)
        if self.keep == "final":
            self._uncaptured = offered
        if not self._forced.is_set() and not self._due(now, steps_ahead=0):
            if not self._prepared and self._due(now, steps_ahead=0, share=0.5):
                self._prepare(state, rng)
            return False
        if self._fenced or self._writer is None:
            return False
        if self._inflight is not None and not self._inflight.done():
            self.observer.skipped("coalesced")
            return False
        self._uncaptured = None
        final = self._final_requested
        self._forced.clear()
        self._last_capture = now
        self._steps = 0
        started = time.perf_counter()
        try:
            if isinstance(state, _LAZY_TYPES):
                state = state()
            if rng:
                from activities import _rng

                state = {RNG_KEY: pickle.dumps(_rng.capture(), protocol=5), "state": state}
            snapshot = self._writer.capture(state, max_bytes=self.memory_budget)
            files = self._capture_files(snapshot)
        except MemoryBudgetExceeded as exc:
            log.error("CheckpointHandler: task %s checkpoint skipped, state exceeds the memory "
                      "budget: %s", self.ctx.task_id, exc)
            self.observer.skipped("memory_budget")
            return False
        except CaptureError as exc:
            log.error("CheckpointHandler: task %s checkpoint skipped, state cannot be "
                      "serialized: %s", self.ctx.task_id, exc)
            self.observer.skipped("capture_error")
            return False
        except MemoryError as exc:
            log.error("CheckpointHandler: task %s checkpoint skipped, out of memory: %s",
                      self.ctx.task_id, exc)
            self.observer.skipped("out_of_memory")
            return False
        captured = time.perf_counter()
        self.observer.captured(captured - started)
        self._inflight = self._persister.submit(self._persist, snapshot, progress_percent, final,
                                                (started, captured), files, offered)
        return True

    def _capture_files(self, snapshot: Any) -> FileCapture | None:
        """The registered directory, read in the same pause as ``snapshot`` (released on error)."""
        assert self._writer is not None
        if self._files_root is None:
            return None
        try:
            return self._writer.capture_files(self._files_root, max_bytes=self.memory_budget)
        except OSError as exc:
            self._writer.pool.release(snapshot)
            raise CaptureError(f"cannot read {self._files_root!r}: {exc}") from exc
        except BaseException:
            self._writer.pool.release(snapshot)
            raise

    def flush(self, timeout: float | None = None) -> CommitInfo | None:
        """Wait for the checkpoint being persisted: what it committed, None if it failed."""
        inflight = self._inflight
        return inflight.result(timeout) if inflight is not None else None

    def _persist(self, snapshot: Any, progress_percent: float | None, final: bool,
                 capture: tuple[float, float], files: FileCapture | None = None,
                 offered: tuple[Any, float | None, bool] | None = None) -> CommitInfo | None:
        """Encode, store and commit ``snapshot`` (and ``files``); ``capture``: when it was
        taken; ``offered``: the ``checkpoint()`` arguments it was captured from."""
        assert self._writer is not None
        info: CommitInfo | None = None
        try:
            info = self._writer.save(snapshot, progress_percent=progress_percent, files=files)
        except Fenced as exc:
            self._fenced = True
            self.observer.fenced()
            log.warning("CheckpointHandler: task %s attempt %d is fenced, a newer attempt owns "
                        "it; no further checkpoints from this attempt: %s", self.ctx.task_id,
                        self.ctx.attempt, exc)
        except StaleCapture as exc:
            # The tensors named are copied from now on: capture again at the next call.
            self.observer.skipped("stale_capture")
            self._forced.set()
            if self.keep == "final" and self._uncaptured is None:
                self._uncaptured = offered   # for the final commit, when no call comes again
            log.warning("CheckpointHandler: task %s checkpoint not stored (%s); capturing again "
                        "at the next call", self.ctx.task_id, exc)
        except CheckpointError as exc:
            self.observer.skipped("storage_full" if isinstance(exc, StorageFull) else "storage_error")
            log.warning("CheckpointHandler: task %s checkpoint not stored (%s); trying again at "
                        "the next interval", self.ctx.task_id, exc)
        except Exception:
            self.observer.skipped("error")
            log.exception("CheckpointHandler: task %s checkpoint failed", self.ctx.task_id)
        else:
            self.last_commit = info
            now = time.perf_counter()
            self.observer.committed(info, now - capture[0], now - capture[1])
            log.info("CheckpointHandler: task %s committed %s seq %d (%d bytes)",
                     self.ctx.task_id, info.kind, info.seq, info.stored_bytes)
            if final:
                self._final_done.set()
        finally:
            if self._writer.previous is not snapshot:
                self._writer.pool.release(snapshot)
        return info

    # -- heartbeat side ------------------------------------------------------------------

    def heartbeat_details(self) -> dict[str, Any]:
        self._maybe_poll_force()
        info = self.last_commit
        full: dict[str, Any] = {"catalog_id": self.manager.catalog_id}
        if self._writer is not None and self._writer.storage_full:
            full["storage_full"] = True
        if info is None:
            if self.restored is None:
                return full
            return {"checkpoint": {"seq": self.restored.seq, "restored": True,
                                   "progress_percent": self.restored.progress_percent}, **full}
        return {"checkpoint": info.ref(), **full}

    def _maybe_poll_force(self) -> None:
        now = self.clock()
        if now - self._last_poll < FORCE_POLL_SECONDS or (self._poll and not self._poll.done()):
            return
        self._last_poll = now
        self._poll = self._poller.submit(self._poll_force)

    def _poll_force(self) -> None:
        try:
            if self.manager.take_force(self.ctx.task_id):
                log.info("CheckpointHandler: task %s: forced checkpoint requested",
                         self.ctx.task_id)
                self._forced.set()
        except Exception as exc:  # the catalog being down must not disturb the task
            log.debug("CheckpointHandler: force poll for %s failed: %s", self.ctx.task_id, exc)

    # -- shutdown ------------------------------------------------------------------------

    def request_final(self) -> None:
        """The worker is stopping: make the next ``checkpoint()`` call capture."""
        self._final_requested = True
        self._forced.set()

    def wait_final(self, timeout: float) -> bool:
        """Block until the final checkpoint committed or the task ended."""
        return self._final_done.wait(timeout)

    async def close(self, *, succeeded: bool) -> None:
        inflight = self._inflight
        if inflight is not None:
            # The result may only be recorded (and the checkpoints cleaned up) once
            # no commit of this attempt can land afterwards.
            await asyncio.wrap_future(inflight)
        if succeeded and self.keep == "final":
            await asyncio.to_thread(self._keep_final)
        self._final_done.set()
        self._remove_restore_dir()

    def _keep_final(self) -> None:
        """Commit the last offered state if its call did not capture it; mark the task kept."""
        if self._uncaptured is not None and not self._fenced:
            state, progress, rng = self._uncaptured
            self._forced.set()
            if self.checkpoint(state, progress, rng=rng) and self.flush() is None:
                log.warning("CheckpointHandler: task %s: its final checkpoint was not stored; "
                            "the newest committed one is kept", self.ctx.task_id)
        # nothing of its own to keep: it never committed, and what it restored is not its own
        if self._fenced or self.last_commit is None and (self.restored is None
                                                         or self.warm_started):
            return
        try:
            if self.manager.mark_kept(self.ctx.task_id, self.epoch):
                log.info("CheckpointHandler: task %s keeps its final checkpoint", self.ctx.task_id)
        except Exception as exc:
            log.warning("CheckpointHandler: task %s: could not mark its checkpoint kept: %s",
                        self.ctx.task_id, exc)
        # The executors are left to the garbage collector rather than shut down: a
        # cancelled attempt's thread may still call checkpoint(), and its commits
        # must go through the fence (and be rejected) rather than crash the thread.


class CheckpointService:
    """What a worker knows of checkpointing: the manager, the memory budget, the observer.

    A task's process opens its own service from the worker's settings and starts a
    :class:`TaskCheckpointSession` per attempt with it (``activities._child``); the
    worker itself uses one only to delete the data of finished tasks and jobs and
    to export the checkpoint events its task processes forward to ``observer``.
    """

    def __init__(self, manager: CheckpointManager, *, memory_budget: int | None = None,
                 observer: CheckpointObserver | None = None) -> None:
        self.manager = manager
        self.memory_budget = memory_budget or default_memory_budget()
        self.observer = observer

    async def cleanup_task(self, job_id: str, task_id: str, status: str = "completed") -> None:
        await asyncio.to_thread(self.manager.finish_task, task_id, status)

    async def cleanup_job(self, job_id: str, outcome: str = "", *, forget: bool = False) -> None:
        await asyncio.to_thread(self.manager.delete_job, job_id, forget=forget)
        if outcome:
            await asyncio.to_thread(self.manager.finish_job, job_id, outcome)


def previous_heartbeat(heartbeat_details: Sequence[Any]) -> tuple[int | None, str | None]:
    """The checkpoint seq and the catalog id the previous attempt's last heartbeat named."""
    first = heartbeat_details[0] if heartbeat_details and isinstance(heartbeat_details[0], dict) \
        else {}
    try:
        seq: int | None = int(first["checkpoint"]["seq"])
    except (KeyError, TypeError, ValueError):
        seq = None
    catalog = first.get("catalog_id")
    return seq, catalog if isinstance(catalog, str) else None
