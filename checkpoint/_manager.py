"""CheckpointManager: attempts and fencing, restore, cleanup and the read API."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from . import _libzstd, _memory
from . import catalog as cat
from ._chain import ChainStore, TierRouter
from ._delta import LinkRef, decode, reuse_buffers
from ._ids import job_prefix, task_prefix, validate_id
from ._records import ManagerConfig, Restored
from ._snapshot import Snapshot
from ._views import StorageView, TaskView, live_bytes, task_view
from ._writer import ChainHead, TaskWriter, link_summary
from .catalog import CheckpointRow, read_engine, transaction, utcnow
from .errors import BlobNotFound, CorruptCheckpoint
from .gc import sweep_orphans
from .stores import BlobStore, SqlStore, open_object_store

__all__ = ["Attempt", "CheckpointManager"]

log = logging.getLogger("checkpoint")


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task: its fencing epoch, what it resumes from, its writer."""

    epoch: int
    restored: Restored | None
    writer: TaskWriter


class CheckpointManager:
    """Stores, restores and cleans up the checkpoints of tasks (DESIGN.md §3).

    Thread-safe; one instance per process is enough. Each attempt of a task
    starts with :meth:`open_attempt` and writes through the writer it returns.
    """

    def __init__(self, engine: Engine, sql_store: BlobStore, object_store: BlobStore,
                 config: ManagerConfig = ManagerConfig()) -> None:
        self.config = config
        self.tiers = TierRouter(sql_store, object_store, config.db_size_limit)
        self.chain = ChainStore(engine, self.tiers, config.key_prefix, numeric_hash=config.numeric_hash)
        self._reader = read_engine(engine)

    @property
    def engine(self) -> Engine:
        return self.chain.engine

    @functools.cached_property
    def catalog_id(self) -> str:
        """The identity of this catalog (a UUID made when it was created)."""
        with transaction(self.engine, "catalog_id") as s:
            return cat.catalog_id(s)

    @classmethod
    def from_urls(cls, database_url: str, blob_url: str, *, s3_endpoint_url: str | None = None,
                  config: ManagerConfig = ManagerConfig(), migrate: bool = True,
                  probe: bool = True) -> CheckpointManager:
        """Open the catalog at ``database_url`` and the object store at ``blob_url``.

        ``migrate`` runs the Alembic migrations first; ``probe`` checks that an
        S3 store honours create-only writes (raises StorageError if not).
        """
        engine = cat.create_engine_for(database_url)
        if migrate:
            cat.upgrade_database(engine)
        objects = open_object_store(blob_url, s3_endpoint_url)
        if probe:
            objects.probe(under=config.key_prefix)  # under ckpt/: a leftover is swept
        return cls(engine, SqlStore(engine), objects, config)

    def close(self) -> None:
        self.tiers.close()
        self.engine.dispose()

    # -- attempts -----------------------------------------------------------------------

    def open_attempt(self, job_id: str, task_id: str, attempt: int = 1, *,
                     max_age: float | None = 3600.0, files_dir: str | None = None) -> Attempt:
        """Start an attempt: a new fencing epoch, the newest consistent state, a writer.

        From the moment the epoch is taken every commit of an older attempt is
        fenced. The committed rows are read once, in the same transaction; the
        restore follows :meth:`restore`'s rules, and the writer continues the
        restored chain when it is the task's newest and complete, else its
        first save is a new base. ``files_dir``: an empty directory the restored
        link's files are written to (see :meth:`restore`).
        """
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        epoch, head_seq, rows = self.chain.begin_attempt(job_id, task_id, attempt)
        log.info("CheckpointManager: task %r attempt %d owns epoch %d", task_id, attempt, epoch)
        restored, links = self._restore_rows(job_id, task_id, rows, max_age, files_dir)
        head = _chain_head(restored, links, head_seq)
        writer = TaskWriter(self.chain, self.config, job_id, task_id, epoch,
                            next_seq=head_seq + 1, head=head)
        return Attempt(epoch, restored, writer)

    # -- restore ------------------------------------------------------------------------

    def restore(self, job_id: str, task_id: str, *, max_age: float | None = 3600.0,
                files_dir: str | None = None) -> Restored | None:
        """Rebuild the newest consistent state of the task, or None (takes no epoch).

        Every blob's size and hash are checked before it is decoded (see ``_apply_links``).
        The chain stops at the first missing or corrupt link (the result is
        then ``truncated``). A checkpoint older than ``max_age`` seconds is
        deleted and None returned. With ``files_dir`` the files committed with
        the restored link are written there (``Restored.files_dir``); a link
        whose files fail their checks is unusable as a whole, so the state and
        the files always come from the same checkpoint.
        """
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        restored = self._restore_rows(job_id, task_id, self.chain.rows(task_id), max_age,
                                      files_dir)[0]
        if restored is not None:
            restored.exclusive = True   # no writer keeps this snapshot as its delta reference
        return restored

    def _restore_rows(self, job_id: str, task_id: str, rows: list[CheckpointRow],
                      max_age: float | None, files_dir: str | None = None,
                      ) -> tuple[Restored | None, list[CheckpointRow]]:
        """The restored state and the links it was built from (base first)."""
        if not rows:
            return None, []
        newest = rows[-1]
        age = (utcnow() - newest.created_at).total_seconds()
        if max_age is not None and age > max_age:
            log.warning("CheckpointManager: task %r checkpoint seq %d is %.0f s old (limit %.0f s);"
                        " deleting it and restarting from scratch", task_id, newest.seq, age, max_age)
            self.chain.delete_rows(task_id, rows, clear=True)
            return None, []
        bases = [r for r in rows if r.kind == "base"]
        for n, base in enumerate(reversed(bases)):
            links = [base] + [r for r in rows if r.kind == "delta" and r.base_seq == base.seq
                              and r.seq > base.seq]
            cut = False
            while links:
                restored, applied = self._restore_chain(job_id, task_id, links,
                                                        newest_chain=n == 0)
                if restored is None or self._restore_files(restored, applied[-1], files_dir):
                    break
                links, cut = applied[:-1], True  # the files of that link are unusable: so is it
            else:
                restored = None
            if restored is not None:
                restored.truncated = restored.truncated or cut
                return restored, applied
        log.warning("CheckpointManager: task %r has no usable checkpoint; starting from scratch",
                    task_id)
        return None, []

    def _restore_files(self, restored: Restored, link: CheckpointRow,
                       files_dir: str | None) -> bool:
        """Write the link's files to ``files_dir``; False when they fail their checks."""
        if link.files is None or files_dir is None:
            return True
        try:
            self.chain.restore_files(restored.task_id, link.seq, link.files, files_dir)
        except (CorruptCheckpoint, BlobNotFound) as exc:
            log.warning("CheckpointManager: task %r seq %d: its files are unusable (%s); "
                        "restoring the last consistent checkpoint before it", restored.task_id,
                        link.seq, exc)
            _empty(files_dir)
            return False
        restored.files_dir = files_dir
        return True

    def _restore_chain(self, job_id: str, task_id: str, links: list[CheckpointRow],
                       newest_chain: bool) -> tuple[Restored | None, list[CheckpointRow]]:
        try:
            snapshot, applied = self._apply_links(task_id, links)
        finally:
            _libzstd.release()   # the restore's scratch and read buffers: their memory goes back
            _memory.READS.release()
        if not applied or snapshot is None:
            return None, []
        last = applied[-1]
        truncated = len(applied) < len(links) or not newest_chain
        log.info("CheckpointManager: restored task %r at seq %d (%d links%s)", task_id, last.seq,
                 len(applied), ", truncated" if truncated else "")
        restored = Restored(
            snapshot=snapshot, task_id=task_id, job_id=job_id, seq=last.seq,
            base_seq=applied[0].seq, epoch=last.epoch, created_at=last.created_at,
            age_seconds=(utcnow() - last.created_at).total_seconds(), truncated=truncated,
            progress_percent=last.progress_percent, chain=tuple(r.seq for r in applied))
        return restored, applied

    def _apply_links(self, task_id: str, links: list[CheckpointRow]
                     ) -> tuple[Snapshot | None, list[CheckpointRow]]:
        """Decode ``links`` in order, streaming each link's parts; stop at the first bad one.

        Every blob is checked (size and hash) before it is decoded, and a
        pickled part is unpickled only after its SHA-256 matched. The parts of
        a link stream through memory (a few ahead of the decoder), so a
        restore holds the state and little more. A delta that turns out bad
        while it is written into the state (a blob that fails its check
        after earlier parts of the link were applied) has damaged the
        state: the links before it are then decoded again.
        """
        snapshot: Snapshot | None = None
        applied: list[CheckpointRow] = []
        for k, link in enumerate(links):
            previous = reuse_buffers(snapshot) if snapshot is not None else None
            against = _link_ref(applied[-1]) if applied else None
            try:
                stream = self.chain.open_link(task_id, link)
            except (CorruptCheckpoint, BlobNotFound) as exc:
                self._unusable(task_id, link, exc)
                break
            try:
                # The intermediate snapshots are ours alone: each link updates the
                # previous one's buffers in place instead of copying the state;
                # the catalog's raw sizes bound every decompression, and its hashes
                # checked every part as it was fetched.
                snapshot = decode(stream.parts, previous, against=against, verified=True)
            except (CorruptCheckpoint, BlobNotFound) as exc:
                self._unusable(task_id, link, exc)
                if previous is not None and previous.damaged:
                    log.warning("CheckpointManager: task %r: decoding seq %d again up to seq %d",
                                task_id, links[0].seq, applied[-1].seq)
                    return self._apply_links(task_id, links[:k])
                break
            finally:
                stream.close()
            applied.append(link)
        return snapshot, applied

    @staticmethod
    def _unusable(task_id: str, link: CheckpointRow, exc: Exception) -> None:
        log.warning("CheckpointManager: task %r seq %d unusable (%s); restoring the last "
                    "consistent checkpoint before it", task_id, link.seq, exc)

    # -- deletion -----------------------------------------------------------------------

    def delete_task(self, task_id: str, *, kept: bool = False) -> None:
        """Delete the task's checkpoint rows and blobs; its summary counters stay.

        The deletion fences the task: a zombie attempt still running (its worker was
        cut off, say) can commit nothing after its task's data was deleted. A kept
        task (``keep="final"``) is left alone unless ``kept=True``.
        """
        validate_id(task_id, "task id")
        with transaction(self._reader, "delete_task") as s:
            task = cat.get_task(s, task_id)
        if task is None:
            return
        if task.kept_at is not None and not kept:
            log.info("CheckpointManager: task %r keeps its final checkpoint", task_id)
            return
        self.chain.delete_task_rows(task_id)
        self.chain.delete_prefix(task_prefix(self.config.key_prefix, task.job_id, task_id))
        if kept:
            with transaction(self.engine, "delete_task") as s:
                cat.release_kept(s, task_id)
        log.info("CheckpointManager: deleted checkpoints of task %r", task_id)

    def delete_job(self, job_id: str, *, forget: bool = False) -> None:
        """Delete the checkpoint data of every task of the job but the kept ones.

        With ``forget=True`` (the job id is used again by a new job) the task rows
        (summary counters) go as well, and so do kept final checkpoints: a new
        job must never resume from the data of an earlier one of the same id.
        """
        validate_id(job_id, "job id")
        with transaction(self._reader, "delete_job") as s:
            tasks = list(cat.job_tasks(s, job_id))
        for task in tasks:
            self.delete_task(task.task_id, kept=forget)
        with transaction(self.engine, "delete_job") as s:
            cat.delete_job_rows(s, job_id, forget=forget)
        if forget or not any(t.kept_at is not None for t in tasks):
            self.chain.delete_prefix(job_prefix(self.config.key_prefix, job_id))
        log.info("CheckpointManager: deleted checkpoints of job %r (%d tasks)", job_id,
                 len(tasks))

    # -- kept final checkpoints (keep="final") ---------------------------------------------

    def mark_kept(self, task_id: str, epoch: int) -> bool:
        """Keep the task's checkpoints after it completes; False when ``epoch`` was fenced."""
        validate_id(task_id, "task id")
        with transaction(self.engine, "mark_kept") as s:
            return cat.mark_kept(s, task_id, epoch, utcnow())

    def kept_tasks(self, job_id: str | None = None) -> list[TaskView]:
        """Tasks whose final checkpoint is kept (of one job, or all), by task id."""
        if job_id is not None:
            validate_id(job_id, "job id")
        with transaction(self._reader, "kept_tasks") as s:
            views = []
            for t in cat.kept_tasks(s, job_id=job_id):
                rows = cat.chain_rows(s, t.task_id)
                views.append(task_view(t, live_bytes(rows), rows))
            return views

    def restore_kept(self, task_id: str, *, files_dir: str | None = None) -> Restored | None:
        """The kept final checkpoint of ``task_id`` (state and files), or None if none is kept."""
        validate_id(task_id, "task id")
        with transaction(self._reader, "restore_kept") as s:
            task = cat.get_task(s, task_id)
        if task is None or task.kept_at is None:
            return None
        return self.restore(task.job_id, task_id, max_age=None, files_dir=files_dir)

    def delete_kept(self, older_than_seconds: float) -> list[str]:
        """Delete the kept checkpoints kept longer than ``older_than_seconds``; their task ids."""
        cutoff = utcnow() - timedelta(seconds=older_than_seconds)
        with transaction(self._reader, "delete_kept") as s:
            task_ids = [t.task_id for t in cat.kept_tasks(s, kept_before=cutoff)]
        for task_id in task_ids:
            self.delete_task(task_id, kept=True)
        return task_ids

    def jobs_with_checkpoints(self) -> list[str]:
        """Ids of jobs that still hold committed checkpoints of tasks not kept (what gc checks)."""
        with transaction(self._reader, "jobs_with_checkpoints") as s:
            return cat.jobs_with_checkpoints(s)

    def sweep_orphans(self, grace_seconds: float | None = None) -> int:
        """Delete blobs no committed checkpoint names, older than the grace period."""
        grace = self.config.orphan_grace_seconds if grace_seconds is None else grace_seconds
        return sweep_orphans(self.engine, self.tiers.stores, self.config.key_prefix, grace)

    # -- force requests and status --------------------------------------------------------

    def request_force(self, task_id: str) -> bool:
        """Ask the task to checkpoint at its next ``checkpoint()`` call.

        Returns False if a request is already pending; KeyError for an unknown task.
        """
        validate_id(task_id, "task id")
        with transaction(self.engine, "request_force") as s:
            result = cat.request_force(s, task_id, utcnow())
        if result is None:
            raise KeyError(task_id)
        return result

    def take_force(self, task_id: str) -> bool:
        """Consume a pending force request; True if there was one."""
        validate_id(task_id, "task id")
        with transaction(self.engine, "take_force") as s:
            return cat.take_force(s, task_id)

    def finish_task(self, task_id: str, status: str) -> None:
        """The task ended (``completed``, ``failed``): delete its data, record ``status``.

        A task the catalog never knew (it never checkpointed) is left unknown.
        """
        self.delete_task(task_id)
        try:
            self.set_status(task_id, status)
        except KeyError:
            pass

    def finish_job(self, job_id: str, outcome: str) -> int:
        """The job ended with ``outcome``: tasks still pending or running get their end.

        A completed job's tasks all completed; a failed or cancelled job's tasks
        that had not ended were cancelled with it. Returns how many rows changed.
        """
        validate_id(job_id, "job id")
        status = "completed" if outcome == "completed" else "cancelled"
        with transaction(self.engine, "finish_job") as s:
            return cat.end_open_tasks(s, job_id, status)

    def set_status(self, task_id: str, status: str) -> None:
        """Record the task's status (e.g. completed, failed); KeyError if unknown."""
        validate_id(task_id, "task id")
        with transaction(self.engine, "set_status") as s:
            if not cat.set_status(s, task_id, status):
                raise KeyError(task_id)

    # -- read API (REST layer and CLI) ------------------------------------------------------

    def job_tasks(self, job_id: str) -> list[TaskView]:
        """The job's tasks (without chains), by task id; empty if the catalog knows none."""
        validate_id(job_id, "job id")
        with transaction(self._reader, "job_tasks") as s:
            stored = cat.stored_bytes_by_task(s, job_id)
            return [task_view(t, stored.get(t.task_id, 0)) for t in cat.job_tasks(s, job_id)]

    def task_view(self, task_id: str) -> TaskView | None:
        """One task with its chain; None if unknown."""
        validate_id(task_id, "task id")
        with transaction(self._reader, "task_view") as s:
            task = cat.get_task(s, task_id)
            if task is None:
                return None
            rows = cat.chain_rows(s, task_id)
            return task_view(task, live_bytes(rows), rows)

    def storage_view(self, task_id: str) -> StorageView | None:
        """Where each blob of the task lives, with sizes and totals; None if unknown."""
        validate_id(task_id, "task id")
        with transaction(self._reader, "storage_view") as s:
            if cat.get_task(s, task_id) is None:
                return None
            rows = cat.chain_rows(s, task_id)
        return StorageView.of(task_id, self.config.db_size_limit, rows,
                              lambda ref: self.tiers.store_for(ref.tier).describe(ref.key))


def _link_ref(row: CheckpointRow) -> LinkRef:
    """How a delta names the link it was encoded against: seq and its index part's SHA-256."""
    return row.seq, str(row.parts[0]["sha256"])


def _chain_head(restored: Restored | None, links: list[CheckpointRow],
                head_seq: int) -> ChainHead | None:
    """What a new attempt's writer continues from (see :class:`ChainHead`)."""
    if restored is None or not links:
        return None
    ref = _link_ref(links[-1])
    if restored.truncated or restored.seq != head_seq or links[0].kind != "base":
        return ChainHead(restored.snapshot, ref, None, files=links[-1].files)
    return ChainHead(restored.snapshot, ref, link_summary(links[0]),
                     tuple(link_summary(r) for r in links[1:]), files=links[-1].files)


def _empty(directory: str) -> None:
    """Remove what a failed restore wrote into ``directory`` (the directory stays)."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
