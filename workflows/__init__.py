"""Temporal workflows: one ``JobWorkflow`` per job, ``BatchWorkflow`` children for big jobs."""

from workflows.job import BatchWorkflow, JobWorkflow
from workflows.models import task_id_for, validate_job_id

__all__ = ["BatchWorkflow", "JobWorkflow", "task_id_for", "validate_job_id"]

WORKFLOWS = [JobWorkflow, BatchWorkflow]
