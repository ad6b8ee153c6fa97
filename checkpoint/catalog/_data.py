"""Data functions over the catalog. Each takes a Session; the caller owns the
transaction (``with transaction(engine, what) as s: ...``, which translates errors)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Result, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Fenced
from ._models import CatalogRow, CheckpointRow, TaskRow, utcnow

__all__ = [
    "begin_attempt",
    "catalog_id",
    "chain_rows",
    "clear_chain",
    "commit_checkpoint",
    "committed_epoch",
    "delete_checkpoints",
    "delete_job_rows",
    "end_open_tasks",
    "ensure_task",
    "fence_tasks",
    "get_task",
    "job_tasks",
    "jobs_with_checkpoints",
    "kept_tasks",
    "mark_kept",
    "release_kept",
    "referenced_keys",
    "request_force",
    "set_status",
    "set_storage_full",
    "stored_bytes_by_task",
    "take_force",
]


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE / DELETE matched (``execute`` returns a CursorResult for those)."""
    return int(cast(CursorResult[Any], result).rowcount)


def catalog_id(s: Session) -> str:
    """This catalog's identity (made by the migration; here for catalogs made otherwise)."""
    found = s.scalar(select(CatalogRow.catalog_id).order_by(CatalogRow.created_at).limit(1))
    if found is not None:
        return str(found)
    made = str(uuid.uuid4())
    s.add(CatalogRow(catalog_id=made, created_at=utcnow()))
    s.flush()
    return made


def get_task(s: Session, task_id: str) -> TaskRow | None:
    return s.get(TaskRow, task_id)


def ensure_task(s: Session, job_id: str, task_id: str) -> TaskRow:
    """The task's row, inserted first if missing (safe against a concurrent insert)."""
    row = s.get(TaskRow, task_id)
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = TaskRow(task_id=task_id, job_id=job_id, epoch=0, attempt=0, head_seq=0,
                          checkpoint_count=0, delta_checkpoints=[], status="pending")
            s.add(row)
    except IntegrityError:
        row = s.get(TaskRow, task_id, populate_existing=True)
        assert row is not None
    return row


def begin_attempt(s: Session, job_id: str, task_id: str, attempt: int) -> int:
    """Take a new fencing epoch for the task and return it."""
    ensure_task(s, job_id, task_id)
    epoch = s.execute(
        update(TaskRow)
        .where(TaskRow.task_id == task_id)
        # a new attempt runs again: what it keeps is decided when it completes
        .values(epoch=TaskRow.epoch + 1, attempt=attempt, status="running", updated_at=utcnow(),
                kept_at=None)
        .returning(TaskRow.epoch)
    ).scalar_one()
    return int(epoch)


def fence_tasks(s: Session, task_ids: Sequence[str]) -> None:
    """Take the tasks from whatever attempt owns them: every later commit of it is fenced."""
    if task_ids:
        s.execute(update(TaskRow).where(TaskRow.task_id.in_(list(task_ids)))
                  .values(epoch=TaskRow.epoch + 1, updated_at=utcnow()))


def commit_checkpoint(s: Session, row: CheckpointRow, summary: dict[str, Any]) -> None:
    """Insert ``row`` if ``row.epoch`` still owns the task, else raise Fenced.

    The guarded UPDATE comes first so that on PostgreSQL it takes the task's
    row lock and a concurrent ``begin_attempt`` is serialised against it.
    """
    values: dict[str, Any] = {
        "head_seq": row.seq,
        "checkpoint_count": TaskRow.checkpoint_count + 1,
        "last_checkpoint_at": row.created_at,
        "updated_at": utcnow(),
        **summary,
    }
    if row.progress_percent is not None:
        values["progress_percent"] = row.progress_percent
    result = s.execute(
        update(TaskRow)
        .where(TaskRow.task_id == row.task_id, TaskRow.epoch == row.epoch, TaskRow.head_seq < row.seq)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        raise Fenced(
            f"CheckpointManager: commit of task {row.task_id!r} seq {row.seq} rejected: "
            f"epoch {row.epoch} is no longer current"
        )
    s.add(row)
    s.flush()


def committed_epoch(s: Session, task_id: str, seq: int) -> int | None:
    """The epoch that committed the task's checkpoint ``seq``; None when none is committed."""
    return s.scalar(select(CheckpointRow.epoch).where(CheckpointRow.task_id == task_id,
                                                      CheckpointRow.seq == seq))


def chain_rows(s: Session, task_id: str) -> list[CheckpointRow]:
    """Every committed checkpoint of the task, oldest first."""
    return list(s.scalars(select(CheckpointRow).where(CheckpointRow.task_id == task_id)
                          .order_by(CheckpointRow.seq)))


def delete_checkpoints(s: Session, task_id: str, seqs: Iterable[int]) -> None:
    seqs = list(seqs)
    if seqs:
        s.execute(delete(CheckpointRow).where(CheckpointRow.task_id == task_id,
                                              CheckpointRow.seq.in_(seqs)))


def clear_chain(s: Session, task_id: str) -> None:
    """Forget the task's chain; the summary counters stay."""
    s.execute(update(TaskRow).where(TaskRow.task_id == task_id)
              .values(base_checkpoint=None, delta_checkpoints=[], checkpoint_storage_path=None,
                      updated_at=utcnow()))


def job_tasks(s: Session, job_id: str) -> Sequence[TaskRow]:
    return s.scalars(select(TaskRow).where(TaskRow.job_id == job_id).order_by(TaskRow.task_id)).all()


def stored_bytes_by_task(s: Session, job_id: str) -> dict[str, int]:
    """Stored bytes of the committed rows of each task of the job."""
    rows = s.execute(select(CheckpointRow.task_id, func.sum(CheckpointRow.stored_bytes))
                     .where(CheckpointRow.job_id == job_id).group_by(CheckpointRow.task_id))
    return {task_id: int(total or 0) for task_id, total in rows}


def jobs_with_checkpoints(s: Session) -> list[str]:
    """Ids of jobs that still hold committed checkpoint rows (of tasks that are not kept)."""
    kept = select(TaskRow.task_id).where(TaskRow.kept_at.is_not(None))
    return sorted(s.scalars(select(CheckpointRow.job_id)
                            .where(CheckpointRow.task_id.not_in(kept)).distinct()))


def delete_job_rows(s: Session, job_id: str, *, forget: bool) -> None:
    """Every checkpoint row of the job but those of kept tasks; with ``forget`` every
    row of the job, task rows and kept ones included."""
    if forget:
        s.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id))
        s.execute(delete(TaskRow).where(TaskRow.job_id == job_id))
        return
    kept = select(TaskRow.task_id).where(TaskRow.job_id == job_id, TaskRow.kept_at.is_not(None))
    s.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id,
                                          CheckpointRow.task_id.not_in(kept)))
    if forget:
        s.execute(delete(TaskRow).where(TaskRow.job_id == job_id, TaskRow.kept_at.is_(None)))


def mark_kept(s: Session, task_id: str, epoch: int, now: datetime) -> bool:
    """Keep the task's checkpoints past its job, if ``epoch`` still owns the task."""
    result = s.execute(update(TaskRow).where(TaskRow.task_id == task_id, TaskRow.epoch == epoch)
                       .values(kept_at=now, status="kept", updated_at=now))
    return _rowcount(result) == 1


def release_kept(s: Session, task_id: str) -> None:
    """The task's checkpoints are no longer kept (they were deleted)."""
    s.execute(update(TaskRow).where(TaskRow.task_id == task_id, TaskRow.kept_at.is_not(None))
              .values(kept_at=None, status="completed", updated_at=utcnow()))


def kept_tasks(s: Session, *, job_id: str | None = None,
               kept_before: datetime | None = None) -> Sequence[TaskRow]:
    """Tasks whose checkpoints are kept, by task id; optionally of one job / kept before a time."""
    query = select(TaskRow).where(TaskRow.kept_at.is_not(None))
    if job_id is not None:
        query = query.where(TaskRow.job_id == job_id)
    if kept_before is not None:
        query = query.where(TaskRow.kept_at < kept_before)
    return s.scalars(query.order_by(TaskRow.task_id)).all()


def referenced_keys(s: Session) -> set[str]:
    """Every blob key that a committed checkpoint row names."""
    keys: set[str] = set()
    for parts, files in s.execute(select(CheckpointRow.parts, CheckpointRow.files)):
        keys.update(p["key"] for p in parts)
        if files:
            keys.update(p["key"] for p in files["chunks"].values())
    return keys


def _end_values(status: str) -> dict[str, Any]:
    # A completed task is done whatever its last checkpoint reported (say 96 %).
    done = {"progress_percent": 100.0} if status == "completed" else {}
    return {"status": status, "updated_at": utcnow(), **done}


def set_status(s: Session, task_id: str, status: str) -> bool:
    """Record ``status``; False if the task is unknown. A kept task stays ``kept``."""
    task = s.get(TaskRow, task_id)
    if task is None:
        return False
    if task.kept_at is None:
        s.execute(update(TaskRow).where(TaskRow.task_id == task_id)
                  .values(**_end_values(status)))
    return True


def end_open_tasks(s: Session, job_id: str, status: str) -> int:
    """Set ``status`` on the job's tasks still pending or running; how many there were."""
    result = s.execute(update(TaskRow)
                       .where(TaskRow.job_id == job_id, TaskRow.status.in_(["pending", "running"]))
                       .values(**_end_values(status)))
    return _rowcount(result)


def set_storage_full(s: Session, task_id: str, since: datetime | None) -> None:
    """Set (a timestamp) or clear (None) the task's "storage full" mark; an existing mark stays."""
    query = update(TaskRow).where(TaskRow.task_id == task_id)
    if since is not None:
        query = query.where(TaskRow.storage_full_since.is_(None))
    s.execute(query.values(storage_full_since=since))


def request_force(s: Session, task_id: str, now: datetime) -> bool | None:
    """Record a force request; False if one is pending, None if the task is unknown."""
    result = s.execute(update(TaskRow)
                       .where(TaskRow.task_id == task_id, TaskRow.force_requested_at.is_(None))
                       .values(force_requested_at=now))
    if _rowcount(result) == 1:
        return True
    exists = s.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.task_id == task_id))
    return False if exists else None


def take_force(s: Session, task_id: str) -> bool:
    result = s.execute(update(TaskRow)
                       .where(TaskRow.task_id == task_id, TaskRow.force_requested_at.is_not(None))
                       .values(force_requested_at=None))
    return _rowcount(result) == 1
