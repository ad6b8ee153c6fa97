"""CheckpointManager: attempts and fencing, restore, cleanup and the read API."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from . import catalog as cat
from ._delta import decode, reuse_buffers
from ._ids import job_prefix, task_prefix, validate_id
from ._records import ManagerConfig, PartRef, Restored
from ._writer import TaskWriter
from .catalog import CheckpointRow, TaskRow, read_engine, utcnow
from .errors import BlobNotFound, CorruptCheckpoint, StorageError
from .gc import sweep_orphans
from .stores import BlobStore, HybridStore, SqlStore, open_object_store

__all__ = ["CheckpointManager"]

log = logging.getLogger("checkpoint")


class CheckpointManager:
    """Stores, restores and cleans up the checkpoints of tasks (DESIGN.md §3).

    Thread-safe; one instance per process is enough. Each attempt of a task
    calls :meth:`begin_attempt`, then :meth:`restore`, then writes through a
    :meth:`writer` bound to its epoch.
    """

    def __init__(self, engine: Engine, sql_store: BlobStore, object_store: BlobStore,
                 config: ManagerConfig = ManagerConfig()) -> None:
        self.engine = engine
        self.config = config
        self.blobs = HybridStore(sql_store, object_store, config.db_size_limit)
        self._reader = read_engine(engine)

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
            objects.probe()
        return cls(engine, SqlStore(engine), objects, config)

    def close(self) -> None:
        self.blobs.close()
        self.engine.dispose()

    # -- attempts -----------------------------------------------------------------------

    def begin_attempt(self, job_id: str, task_id: str, attempt: int = 1) -> int:
        """Create the task if missing and take a new fencing epoch; return it."""
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            epoch = cat.begin_attempt(s, job_id, task_id, attempt)
        log.info("CheckpointManager: task %r attempt %d owns epoch %d", task_id, attempt, epoch)
        return epoch

    def writer(self, job_id: str, task_id: str, epoch: int,
               restored: Restored | None = None) -> TaskWriter:
        """A writer for the attempt holding ``epoch``; pass what :meth:`restore` returned."""
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        return TaskWriter(self, job_id, task_id, epoch, restored)

    # -- restore ------------------------------------------------------------------------

    def restore(self, job_id: str, task_id: str, *,
                max_age: float | None = 3600.0) -> Restored | None:
        """Rebuild the newest consistent state of the task, or None.

        Every blob's size and SHA-256 are checked before anything is decoded.
        The chain stops at the first missing or corrupt link (the result is
        then ``truncated``). A checkpoint older than ``max_age`` seconds is
        deleted and None returned.
        """
        validate_id(job_id, "job id")
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            rows = cat.chain_rows(s, task_id)
            s.expunge_all()
        if not rows:
            return None
        newest = rows[-1]
        age = (utcnow() - newest.created_at).total_seconds()
        if max_age is not None and age > max_age:
            log.warning("CheckpointManager: task %r checkpoint seq %d is %.0f s old (limit %.0f s);"
                        " deleting it and restarting from scratch", task_id, newest.seq, age, max_age)
            self._delete_chain(task_id, rows)
            return None
        bases = [r for r in rows if r.kind == "base"]
        for n, base in enumerate(reversed(bases)):
            links = [base] + [r for r in rows if r.kind == "delta" and r.base_seq == base.seq
                              and r.seq > base.seq]
            restored = self._restore_chain(job_id, task_id, links, newest_chain=n == 0)
            if restored is not None:
                return restored
        log.warning("CheckpointManager: task %r has no usable checkpoint; starting from scratch",
                    task_id)
        return None

    def _restore_chain(self, job_id: str, task_id: str, links: list[CheckpointRow],
                       newest_chain: bool) -> Restored | None:
        verified: list[tuple[CheckpointRow, list[tuple[bytes, str]]]] = []
        # verify every blob of the chain before decoding any of them
        for link, result in zip(links, self._fetch_chain(task_id, links), strict=True):
            if isinstance(result, (CorruptCheckpoint, BlobNotFound)):
                log.warning("CheckpointManager: task %r seq %d unusable (%s); restoring the last "
                            "consistent checkpoint before it", task_id, link.seq, result)
                break
            verified.append((link, result))
        snapshot = None
        applied: list[CheckpointRow] = []
        for link, parts in verified:
            try:
                # The intermediate snapshots are ours alone: each link updates the
                # previous one's buffers in place instead of copying the state.
                snapshot = decode(parts, reuse_buffers(snapshot) if snapshot is not None else None)
            except CorruptCheckpoint as exc:
                log.warning("CheckpointManager: task %r seq %d failed to decode (%s); restoring "
                            "the last consistent checkpoint before it", task_id, link.seq, exc)
                break
            applied.append(link)
        if not applied or snapshot is None:
            return None
        last = applied[-1]
        truncated = len(applied) < len(links) or not newest_chain
        log.info("CheckpointManager: restored task %r at seq %d (%d links%s)", task_id, last.seq,
                 len(applied), ", truncated" if truncated else "")
        return Restored(snapshot=snapshot, task_id=task_id, job_id=job_id, seq=last.seq,
                        base_seq=applied[0].seq, epoch=last.epoch, created_at=last.created_at,
                        age_seconds=(utcnow() - last.created_at).total_seconds(),
                        truncated=truncated, progress_percent=last.progress_percent,
                        chain=tuple(r.seq for r in applied))

    def _fetch_chain(self, task_id: str, links: list[CheckpointRow]
                     ) -> list[list[tuple[bytes, str]] | CorruptCheckpoint | BlobNotFound]:
        """Every blob of every link, fetched and hashed on one pool (hashing overlaps I/O).

        Per link: its parts with their codecs, or the first error met.
        """
        refs = [[PartRef.from_json(p) for p in link.parts] for link in links]

        def fetch(item: tuple[CheckpointRow, PartRef]) -> bytes:
            link, ref = item
            data = self.blobs.store_for(ref.tier).get(ref.key)
            if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
                raise CorruptCheckpoint(f"blob {ref.key!r} of task {task_id!r} seq {link.seq} "
                                        f"fails its SHA-256 check")
            return data

        jobs = [(link, ref) for link, rs in zip(links, refs, strict=True) for ref in rs]
        with ThreadPoolExecutor(max(1, min(8, len(jobs)))) as pool:
            futures = [pool.submit(fetch, job) for job in jobs]
        out: list[list[tuple[bytes, str]] | CorruptCheckpoint | BlobNotFound] = []
        for rs in refs:
            mine, futures = futures[:len(rs)], futures[len(rs):]
            errors = [f.exception() for f in mine if f.exception() is not None]
            for error in errors:
                if not isinstance(error, (CorruptCheckpoint, BlobNotFound)):
                    raise error
            out.append(errors[0] if errors else  # type: ignore[arg-type]
                       [(f.result(), ref.codec) for f, ref in zip(mine, rs, strict=True)])
        return out

    # -- deletion -----------------------------------------------------------------------

    def _delete_blobs(self, refs: Iterable[PartRef]) -> None:
        """Best effort: what fails here is left to the orphan sweeper."""
        for ref in refs:
            try:
                self.blobs.store_for(ref.tier).delete(ref.key)
            except StorageError as exc:
                log.warning("CheckpointManager: could not delete blob %r: %s", ref.key, exc)

    def _delete_chain(self, task_id: str, rows: list[CheckpointRow]) -> None:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            cat.delete_checkpoints(s, task_id, [r.seq for r in rows])
            cat.clear_chain(s, task_id)
        self._delete_blobs(PartRef.from_json(p) for r in rows for p in r.parts)

    def _drop_older_than(self, job_id: str, task_id: str, seq: int) -> None:
        """After a new base committed at ``seq``: delete the chains before it."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            old = [r for r in cat.chain_rows(s, task_id) if r.seq < seq]
            cat.delete_checkpoints(s, task_id, [r.seq for r in old])
            refs = [PartRef.from_json(p) for r in old for p in r.parts]
        if old:
            self._delete_blobs(refs)
            log.info("CheckpointManager: compacted task %r: dropped %d checkpoints before base "
                     "seq %d", task_id, len(old), seq)

    def delete_task(self, task_id: str) -> None:
        """Delete the task's checkpoint rows and blobs; its summary counters stay."""
        validate_id(task_id, "task id")
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            task = cat.get_task(s, task_id)
            if task is None:
                return
            job_id = task.job_id
            rows = cat.chain_rows(s, task_id)
            cat.delete_checkpoints(s, task_id, [r.seq for r in rows])
            cat.clear_chain(s, task_id)
        self._delete_blobs(PartRef.from_json(p) for r in rows for p in r.parts)
        self._delete_prefix(task_prefix(self.config.key_prefix, job_id, task_id))
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
            s.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id))
            if forget:
                s.execute(delete(TaskRow).where(TaskRow.job_id == job_id))
        self._delete_prefix(job_prefix(self.config.key_prefix, job_id))
        log.info("CheckpointManager: deleted checkpoints of job %r (%d tasks)", job_id,
                 len(task_ids))

    def _delete_prefix(self, prefix: str) -> None:
        for store in (self.blobs.sql, self.blobs.objects):
            store.delete_prefix(prefix)

    def sweep_orphans(self, grace_seconds: float | None = None) -> int:
        """Delete blobs no committed checkpoint names, older than the grace period."""
        grace = self.config.orphan_grace_seconds if grace_seconds is None else grace_seconds
        return sweep_orphans(self.engine, (self.blobs.sql, self.blobs.objects),
                             self.config.key_prefix, grace)

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

    # -- read API (REST layer) -------------------------------------------------------------

    def job_summary(self, job_id: str) -> dict[str, Any]:
        """The spec's job view; KeyError if the catalog knows no task of the job."""
        validate_id(job_id, "job id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            tasks = cat.job_tasks(s, job_id)
            stored = dict(s.execute(
                select(CheckpointRow.task_id, func.sum(CheckpointRow.stored_bytes))
                .where(CheckpointRow.job_id == job_id).group_by(CheckpointRow.task_id)).all())
            items = [_task_item(t, int(stored.get(t.task_id) or 0)) for t in tasks]
        if not items:
            raise KeyError(job_id)
        progress = [i["progress_percent"] or 0.0 for i in items]
        return {
            "job_id": job_id,
            "total_tasks": len(items),
            "tasks_with_checkpoints": sum(1 for i in items if i["checkpoint_count"] > 0),
            "average_progress_percent": sum(progress) / len(progress),
            "total_checkpoints_taken": sum(i["checkpoint_count"] for i in items),
            "tasks": items,
        }

    def task_detail(self, task_id: str) -> dict[str, Any]:
        """Head seq, counters and the chain of one task; KeyError if unknown."""
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            task = cat.get_task(s, task_id)
            if task is None:
                raise KeyError(task_id)
            rows = cat.chain_rows(s, task_id)
            item = _task_item(task, sum(r.stored_bytes for r in rows))
            chain = [_chain_item(r) for r in rows]
        newest = rows[-1].created_at if rows else None
        return {**item, "job_id": task.job_id, "head_seq": task.head_seq,
                "checkpoint_storage_path": task.checkpoint_storage_path,
                "force_requested_at": _iso(task.force_requested_at),
                "age_seconds": (utcnow() - newest).total_seconds() if newest else None,
                "chain": chain}

    def storage_info(self, task_id: str) -> dict[str, Any]:
        """Where each blob of the task lives, with sizes; KeyError if unknown."""
        validate_id(task_id, "task id")
        with Session(self._reader, expire_on_commit=False) as s, s.begin():
            if cat.get_task(s, task_id) is None:
                raise KeyError(task_id)
            rows = cat.chain_rows(s, task_id)
        blobs = []
        for r in rows:
            for i, p in enumerate(r.parts):
                ref = PartRef.from_json(p)
                blobs.append({"seq": r.seq, "part": i, "kind": r.kind, "key": ref.key,
                              "storage": "database" if ref.tier == "sql" else "object_store",
                              "location": self.blobs.store_for(ref.tier).describe(ref.key),
                              "stored_bytes": ref.size, "raw_bytes": ref.raw_size,
                              "codec": ref.codec, "sha256": ref.sha256})
        db = sum(b["stored_bytes"] for b in blobs if b["storage"] == "database")
        obj = sum(b["stored_bytes"] for b in blobs if b["storage"] == "object_store")
        return {"task_id": task_id, "db_size_limit": self.config.db_size_limit, "blobs": blobs,
                "totals": {"blob_count": len(blobs), "database_bytes": db,
                           "object_store_bytes": obj, "stored_bytes": db + obj,
                           "raw_bytes": sum(b["raw_bytes"] for b in blobs)}}

    def _storage_path(self, refs: list[PartRef]) -> str:
        for ref in refs:
            if ref.tier == "object":
                return self.blobs.objects.describe(ref.key).rsplit("/", 1)[0]
        return "database"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _task_item(t: TaskRow, stored_bytes: int) -> dict[str, Any]:
    return {"task_id": t.task_id, "progress_percent": t.progress_percent,
            "checkpoint_count": t.checkpoint_count, "last_checkpoint_at": _iso(t.last_checkpoint_at),
            "base_checkpoint_size": t.base_checkpoint_size, "attempt": t.attempt,
            "epoch": t.epoch, "status": t.status, "stored_bytes": stored_bytes}


def _chain_item(r: CheckpointRow) -> dict[str, Any]:
    return {"seq": r.seq, "kind": r.kind, "base_seq": r.base_seq, "epoch": r.epoch,
            "created_at": _iso(r.created_at), "progress_percent": r.progress_percent,
            "raw_bytes": r.raw_bytes, "stored_bytes": r.stored_bytes,
            "codecs": sorted({p["codec"] for p in r.parts}), "parts": len(r.parts)}

