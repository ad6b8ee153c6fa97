"""Temporal workflows: one ``JobWorkflow`` per job, ``BatchWorkflow`` children for big jobs."""

from workflows._runner import control_queue
from workflows.job import BatchWorkflow, JobWorkflow
from workflows.models import task_id_for, validate_job_id

__all__ = ["WORKFLOWS", "BatchWorkflow", "JobWorkflow", "control_queue", "task_id_for", "validate_job_id"]

#: what a worker (and a replayer) registers
WORKFLOWS = [JobWorkflow, BatchWorkflow]
