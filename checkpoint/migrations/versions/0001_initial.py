"""Initial catalog: tasks, checkpoints, blobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from checkpoint.catalog import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("head_seq", sa.Integer, nullable=False),
        sa.Column("base_checkpoint", sa.JSON, nullable=True),
        sa.Column("delta_checkpoints", sa.JSON, nullable=False),
        sa.Column("checkpoint_count", sa.Integer, nullable=False),
        sa.Column("progress_percent", sa.Float, nullable=True),
        sa.Column("last_checkpoint_at", UTCDateTime, nullable=True),
        sa.Column("checkpoint_storage_path", sa.String(1024), nullable=True),
        sa.Column("base_checkpoint_size", sa.Integer, nullable=True),
        sa.Column("force_requested_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_tasks_job_id", "tasks", ["job_id"])
    op.create_table(
        "checkpoints",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("base_seq", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("progress_percent", sa.Float, nullable=True),
        sa.Column("raw_bytes", sa.Integer, nullable=False),
        sa.Column("stored_bytes", sa.Integer, nullable=False),
        sa.Column("parts", sa.JSON, nullable=False),
    )
    op.create_index("ix_checkpoints_job_id", "checkpoints", ["job_id"])
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blobs")
    op.drop_index("ix_checkpoints_job_id", "checkpoints")
    op.drop_table("checkpoints")
    op.drop_index("ix_tasks_job_id", "tasks")
    op.drop_table("tasks")
