"""CheckpointManager: attempts and fencing, restore, cleanup and the read API."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from . import catalog as cat
from ._chain import ChainStore, TierRouter
from ._delta import LinkRef, decode, reuse_buffers
from ._ids import job_prefix, task_prefix, validate_id
from ._records import ManagerConfig, Restored
from ._snapshot import Snapshot
from ._views import StorageView, TaskView, task_view
from ._writer import ChainHead, TaskWriter, link_summary
from .catalog import CheckpointRow, read_engine, utcnow
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
        with Session(self.engine) as s, s.begin():
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
        if probe and hasattr(objects, "probe"):
            objects.probe(under=config.key_prefix)  # under ckpt/: a leftover is swept
        return cls(engine, SqlStore(engine), objects, config)

    def close(self) -> None:
        self.tiers.close()
        self.engine.dispose()

    # -- attempts -----------------------------------------------------------------------

    def open_attempt(self, job_id: str, task_id: str, attempt: int = 1, *,
                     max_age: float | None = 3600.0) -> Attempt:
        """Start an attempt: a new fencing epoch, the newest consistent state, a writer.

        From the moment the epoch is taken every commit of an older attempt is
        fenced. The committed rows are read once, in the same transaction; the
        restore follows :meth:`restore`'s rules, and the writer continues the
        restored chain when it is the task's newest and complete, else its
        first save is a new base.
        """
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        epoch, head_seq, rows = self.chain.begin_attempt(job_id, task_id, attempt)
        log.info("CheckpointManager: task %r attempt %d owns epoch %d", task_id, attempt, epoch)
        restored, links = self._restore_rows(job_id, task_id, rows, max_age)
        head = _chain_head(restored, links, head_seq)
        writer = TaskWriter(self.chain, self.config, job_id, task_id, epoch,
                            next_seq=head_seq + 1, head=head)
        return Attempt(epoch, restored, writer)

    # -- restore ------------------------------------------------------------------------

    def restore(self, job_id: str, task_id: str, *,
                max_age: float | None = 3600.0) -> Restored | None:
        """Rebuild the newest consistent state of the task, or None (takes no epoch).

        Every blob's size and hash are checked before it is decoded (see ``_apply_links``).
        The chain stops at the first missing or corrupt link (the result is
        then ``truncated``). A checkpoint older than ``max_age`` seconds is
        deleted and None returned.
        """
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        restored = self._restore_rows(job_id, task_id, self.chain.rows(task_id), max_age)[0]
        if restored is not None:
            restored.exclusive = True   # no writer keeps this snapshot as its delta reference
        return restored

    def _restore_rows(self, job_id: str, task_id: str, rows: list[CheckpointRow],
                      max_age: float | None) -> tuple[Restored | None, list[CheckpointRow]]:
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
            restored, applied = self._restore_chain(job_id, task_id, links, newest_chain=n == 0)
            if restored is not None:
                return restored, applied
        log.warning("CheckpointManager: task %r has no usable checkpoint; starting from scratch",
                    task_id)
        return None, []

    def _restore_chain(self, job_id: str, task_id: str, links: list[CheckpointRow],
                       newest_chain: bool) -> tuple[Restored | None, list[CheckpointRow]]:
        snapshot, applied = self._apply_links(task_id, links)
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
                # the catalog's raw sizes bound every decompression.
                snapshot = decode(stream.parts, previous, against=against)
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

    def delete_task(self, task_id: str) -> None:
        """Delete the task's checkpoint rows and blobs; its summary counters stay.

        The deletion fences the task: a zombie attempt still running (its worker was
        cut off, say) can commit nothing after its task's data was deleted.
        """
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            task = cat.get_task(s, task_id)
        if task is None:
            return
        self.chain.delete_task_rows(task_id)
        self.chain.delete_prefix(task_prefix(self.config.key_prefix, task.job_id, task_id))
        log.info("CheckpointManager: deleted checkpoints of task %r", task_id)

    def delete_job(self, job_id: str, *, forget: bool = False) -> None:
        """Delete the checkpoint data of every task of the job.

        With ``forget=True`` the task rows (summary counters) go as well.
        """
        validate_id(job_id, "job id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            task_ids = [t.task_id for t in cat.job_tasks(s, job_id)]
        for task_id in task_ids:
            self.delete_task(task_id)
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            cat.delete_job_rows(s, job_id, forget=forget)
        self.chain.delete_prefix(job_prefix(self.config.key_prefix, job_id))
        log.info("CheckpointManager: deleted checkpoints of job %r (%d tasks)", job_id,
                 len(task_ids))

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
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            result = cat.request_force(s, task_id, utcnow())
        if result is None:
            raise KeyError(task_id)
        return result

    def take_force(self, task_id: str) -> bool:
        """Consume a pending force request; True if there was one."""
        validate_id(task_id, "task id")
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            return cat.take_force(s, task_id)

    def set_status(self, task_id: str, status: str) -> None:
        """Record the task's status (e.g. completed, failed); KeyError if unknown."""
        validate_id(task_id, "task id")
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            if not cat.set_status(s, task_id, status):
                raise KeyError(task_id)

    # -- read API (REST layer and CLI) ------------------------------------------------------

    def job_tasks(self, job_id: str) -> list[TaskView]:
        """The job's tasks (without chains), by task id; empty if the catalog knows none."""
        validate_id(job_id, "job id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            stored = cat.stored_bytes_by_task(s, job_id)
            return [task_view(t, stored.get(t.task_id, 0)) for t in cat.job_tasks(s, job_id)]

    def task_view(self, task_id: str) -> TaskView | None:
        """One task with its chain; None if unknown."""
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            task = cat.get_task(s, task_id)
            if task is None:
                return None
            rows = cat.chain_rows(s, task_id)
            return task_view(task, sum(r.stored_bytes for r in rows), rows)

    def storage_view(self, task_id: str) -> StorageView | None:
        """Where each blob of the task lives, with sizes and totals; None if unknown."""
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
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
        return ChainHead(restored.snapshot, ref, None)
    return ChainHead(restored.snapshot, ref, link_summary(links[0]),
                     tuple(link_summary(r) for r in links[1:]))
