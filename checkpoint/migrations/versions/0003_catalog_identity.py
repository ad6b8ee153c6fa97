"""catalog: one row naming this catalog (a UUID made when it is created).

Workers carry the id in their heartbeats, so an attempt that finds a different
catalog than its task's earlier attempts used fails instead of restarting the
task from zero.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from checkpoint.catalog import UTCDateTime, utcnow

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "catalog",
        sa.Column("catalog_id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.bulk_insert(table, [{"catalog_id": str(uuid.uuid4()), "created_at": utcnow()}])


def downgrade() -> None:
    op.drop_table("catalog")
