"""``read_job_items`` / ``write_job_results``: a batch's side of the job item store.

The store itself (``sdk._job_items``) is shared with the client, which writes a
large job's items before it starts the job and reads the results at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from sdk._job_items import ITEMS, RESULTS, JobItemStore
from workflows.models import ChunkRef, ChunkResults, model_from_json
from workflows.payloads import is_given

# ``write_job_results``' results when a first-format batch passes them in ``ChunkResults``.
NO_RESULTS = RawValue(Payload())

__all__ = ["JobItemActivities"]


class JobItemActivities:
    """``read_job_items`` / ``write_job_results``: a batch's side of the store."""

    def __init__(self, store: JobItemStore) -> None:
        self.store = store

    def activities(self) -> list[Callable[..., Any]]:
        return [self.read_job_items, self.write_job_results]

    @activity.defn(name="read_job_items")
    async def read_job_items(self, arg: ChunkRef) -> RawValue | list[str]:
        """The items of one chunk of a job: one payload of them (base64 lines, first format)."""
        if arg.payloads:
            payload = await asyncio.to_thread(self.store.get_payload, arg.job_id, ITEMS, arg.chunk)
            return RawValue(payload)
        return await asyncio.to_thread(self.store.get_chunk, arg.job_id, ITEMS, arg.chunk)

    @activity.defn(name="write_job_results")
    async def write_job_results(self, arg: ChunkResults, results: RawValue = NO_RESULTS) -> None:
        """Store the results of one chunk (idempotent: a retry rewrites them)."""
        if isinstance(arg, dict):
            # A first-format batch passes one argument where the definition has two:
            # Temporal then decodes it without type hints, as the JSON object it is.
            arg = model_from_json(ChunkResults, arg)
        if is_given(results):
            await asyncio.to_thread(self.store.put_payload, arg.job_id, RESULTS, arg.chunk,
                                    results.payload)
            return
        await asyncio.to_thread(self.store.put_chunk, arg.job_id, RESULTS, arg.chunk, arg.results)
