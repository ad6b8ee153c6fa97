"""What Temporal knows about a job: its workflow status and, while it runs, its size.

The job id is the workflow id. Temporal being down must not turn a monitoring
request into a 500: callers get ``TemporalUnavailable`` and decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

__all__ = ["ClientFactory", "JobStatusSource", "TemporalUnavailable", "WorkflowFacts"]

log = logging.getLogger(__name__)

ClientFactory = Callable[[], Awaitable[Client]]

_STATUS = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
}

DESCRIBE_TIMEOUT = timedelta(seconds=5)
QUERY_TIMEOUT = timedelta(seconds=2)


class TemporalUnavailable(Exception):
    """The Temporal frontend could not be reached or answered with an error."""


@dataclass(frozen=True)
class WorkflowFacts:
    """``status`` is None when no workflow has this id; ``total_tasks`` when known."""

    status: str | None
    total_tasks: int | None = None


class JobStatusSource:
    """Describes job workflows through one lazily connected, shared client."""

    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def _get_client(self) -> Client:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    try:
                        self._client = await self._factory()
                    except Exception as exc:
                        raise TemporalUnavailable(f"cannot connect to Temporal: {exc}") from exc
        return self._client

    async def facts(self, job_id: str) -> WorkflowFacts:
        """Status of workflow ``job_id`` and, if it runs, its task count (``progress`` query)."""
        client = await self._get_client()
        handle = client.get_workflow_handle(job_id)
        try:
            desc = await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return WorkflowFacts(status=None)
            raise TemporalUnavailable(f"describe {job_id!r} failed: {exc}") from exc
        status = _STATUS.get(desc.status, "unknown") if desc.status else "unknown"
        total = await self._total_tasks(handle) if status == "running" else None
        return WorkflowFacts(status=status, total_tasks=total)

    @staticmethod
    async def _total_tasks(handle: Any) -> int | None:
        """The job's ``progress`` query (workflows.JobWorkflow), if a worker answers quickly."""
        try:
            result = await handle.query("progress", rpc_timeout=QUERY_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the count is optional
            log.debug("progress query failed: %s", exc)
            return None
        total = result.get("total") if isinstance(result, dict) else getattr(result, "total", None)
        return total if isinstance(total, int) and total >= 0 else None
