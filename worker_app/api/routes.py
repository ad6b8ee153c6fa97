"""The specification's monitoring endpoints under ``/api/checkpoints``.

Ids are validated by their path patterns (422 otherwise) before anything else
sees them; catalog reads run in the thread pool; the job status comes from
Temporal (the job id is the workflow id).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from checkpoint.errors import InvalidId

from ._ids import JOB_ID_PATTERN, TASK_ID_PATTERN
from ._jobs import JobNotFound, job_checkpoints
from ._temporal import TemporalUnavailable
from .auth import require_admin, require_read
from .schemas import (
    ErrorBody,
    ForceCheckpointAccepted,
    JobCheckpoints,
    KeptCheckpoints,
    StorageInfo,
    TaskDetail,
    ValidationErrorBody,
)

__all__ = ["router"]

JobId = Annotated[
    str,
    Path(pattern=JOB_ID_PATTERN, max_length=200, description="The job id (= workflow id)."),
]
TaskId = Annotated[
    str,
    Path(pattern=TASK_ID_PATTERN, max_length=210, description="`{job_id}:{index}`."),
]

_COMMON: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown job or task."},
    422: {"model": ValidationErrorBody, "description": "Malformed id."},
    503: {"model": ErrorBody, "description": "Catalog (or, for jobs, Temporal) unavailable."},
}

_AUTH: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "Too many failed token attempts (Retry-After)."},
}
# The GET endpoints: 401 only when CROWDCOMPUTE_API_READ_TOKEN is set.
_READ: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    **_AUTH,
    401: {"model": ErrorBody, "description": "Read token set; missing or wrong bearer token."},
}

router = APIRouter(prefix="/api/checkpoints", tags=["checkpoints"])


def _not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident!r} not found")


@router.get(
    "/jobs/{job_id}",
    response_model=JobCheckpoints,
    responses=_READ,
    dependencies=[Depends(require_read)],
    summary="Checkpoint progress of every task of a job",
)
async def get_job(job_id: JobId, request: Request) -> JobCheckpoints:
    state = request.app.state
    try:
        return await job_checkpoints(state.reader, state.job_status, job_id)
    except JobNotFound:
        raise _not_found("job", job_id) from None
    except TemporalUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


@router.get(
    "/kept",
    response_model=KeptCheckpoints,
    responses=_READ,
    dependencies=[Depends(require_read)],
    summary="Final checkpoints kept after their tasks completed (keep='final')",
)
async def get_kept(request: Request, job_id: Annotated[
        str | None, Query(pattern=JOB_ID_PATTERN, max_length=200,
                          description="Only this job's.")] = None) -> KeptCheckpoints:
    kept: KeptCheckpoints = await run_in_threadpool(request.app.state.reader.kept, job_id)
    return kept


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    responses=_READ,
    dependencies=[Depends(require_read)],
    summary="Checkpoint details of one task: head, chain, age, attempt, epoch",
)
async def get_task(task_id: TaskId, request: Request) -> TaskDetail:
    detail: TaskDetail | None = await run_in_threadpool(request.app.state.reader.task_detail,
                                                        task_id)
    if detail is None:
        raise _not_found("task", task_id)
    return detail


@router.get(
    "/storage-info/{task_id}",
    response_model=StorageInfo,
    responses=_READ,
    dependencies=[Depends(require_read)],
    summary="Where each blob of a task's live chain is stored, with sizes",
)
async def get_storage_info(task_id: TaskId, request: Request) -> StorageInfo:
    state = request.app.state
    info: StorageInfo | None = await run_in_threadpool(
        state.reader.storage_info,
        task_id,
        object_store=state.object_store,
    )
    if info is None:
        raise _not_found("task", task_id)
    return info


@router.post(
    "/tasks/{task_id}/force-checkpoint",
    response_model=ForceCheckpointAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_admin)],
    responses={
        **_COMMON,
        **_AUTH,
        401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
        403: {"model": ErrorBody, "description": "No admin token configured: disabled."},
    },
    summary="Ask the task's next checkpoint() call to capture now (admin)",
)
async def force_checkpoint(task_id: TaskId, request: Request) -> ForceCheckpointAccepted:
    try:
        recorded = await run_in_threadpool(request.app.state.manager.request_force, task_id)
    except KeyError:
        raise _not_found("task", task_id) from None
    except InvalidId as exc:  # the path pattern is stricter; kept as a second line
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return ForceCheckpointAccepted(task_id=task_id, already_pending=not recorded)
