"""Garbage collection: the orphan policy (pure) and the sweep that applies it.

An orphan is a blob under the manager's key prefix that no committed
checkpoint row names and that is older than a grace period: the leftovers of a
save that crashed between writing blobs and committing, of a fenced zombie,
or of a cleanup interrupted half-way. The sweep also removes what interrupted
puts left that is not a blob at all (unfinished S3 multipart uploads, temp
files of a local store; :meth:`BlobStore.sweep_incomplete`). The grace period
protects saves that are in flight right now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from .catalog import read_engine, referenced_keys, transaction, utcnow
from .stores import BlobInfo, BlobStore

__all__ = ["select_orphans", "sweep_orphans"]

log = logging.getLogger("checkpoint")


def select_orphans(blobs: Iterable[BlobInfo], referenced: set[str], now: datetime,
                   grace_seconds: float) -> list[str]:
    """Keys of ``blobs`` that are unreferenced and older than the grace period."""
    cutoff = now - timedelta(seconds=grace_seconds)
    return sorted(b.key for b in blobs if b.key not in referenced and b.modified_at <= cutoff)


def sweep_orphans(engine: Engine, stores: Iterable[BlobStore], prefix: str,
                  grace_seconds: float) -> int:
    """Delete orphaned blobs and stale incomplete writes under ``prefix/``; return how many."""
    removed = 0
    for store in stores:
        # list before reading the references: a blob committed in between counts as referenced
        blobs = list(store.scan(f"{prefix}/"))
        with transaction(read_engine(engine), "reading the referenced blob keys") as s:
            referenced = referenced_keys(s)
        now = utcnow()
        orphans = select_orphans(blobs, referenced, now, grace_seconds)
        for key in orphans:
            store.delete(key)
        incomplete = store.sweep_incomplete(f"{prefix}/", now - timedelta(seconds=grace_seconds))
        if orphans or incomplete:
            log.info("CheckpointManager: swept %d orphaned blobs and %d incomplete writes from "
                     "the %s tier", len(orphans), incomplete, store.tier)
        removed += len(orphans) + incomplete
    return removed
