"""A tiny real workflow standing in for a job: it runs until signalled and
answers the ``progress`` query the way ``JobWorkflow`` does (``total``)."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError


@workflow.defn(name="ApiProbeWorkflow")
class ProbeWorkflow:
    def __init__(self) -> None:
        self._total = 0
        self._outcome: str | None = None

    @workflow.run
    async def run(self, total: int) -> str:
        self._total = total
        await workflow.wait_condition(lambda: self._outcome is not None)
        if self._outcome == "fail":
            raise ApplicationError("asked to fail", non_retryable=True)
        return "done"

    @workflow.signal
    def finish(self, outcome: str) -> None:
        self._outcome = outcome

    @workflow.query
    def progress(self) -> dict[str, object]:
        return {"job_id": workflow.info().workflow_id, "total": self._total}
