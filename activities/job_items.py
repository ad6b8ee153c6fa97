"""``read_job_items`` / ``write_job_results``: a batch's side of the job item store.

The store itself (``sdk._job_items``) is shared with the client, which writes a
large job's items before it starts the job and reads the results at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity

from sdk._job_items import ITEMS, RESULTS, JobItemStore
from workflows.models import ChunkRef, ChunkResults

__all__ = ["JobItemActivities"]


class JobItemActivities:
    """``read_job_items`` / ``write_job_results``: a batch's side of the store."""

    def __init__(self, store: JobItemStore) -> None:
        self.store = store

    def activities(self) -> list[Callable[..., Any]]:
        return [self.read_job_items, self.write_job_results]

    @activity.defn(name="read_job_items")
    async def read_job_items(self, arg: ChunkRef) -> list[str]:
        """The encoded items of one chunk of a job."""
        return await asyncio.to_thread(self.store.get_chunk, arg.job_id, ITEMS, arg.chunk)

    @activity.defn(name="write_job_results")
    async def write_job_results(self, arg: ChunkResults) -> None:
        """Store the encoded results of one chunk (idempotent: a retry rewrites them)."""
        await asyncio.to_thread(self.store.put_chunk, arg.job_id, RESULTS, arg.chunk, arg.results)
