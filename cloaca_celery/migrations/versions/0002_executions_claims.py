"""Execution history, deduplication claims, and the deduplicated-fire count.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.add_column(sa.Column("dedup_count", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "cloaca_executions",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("trigger_name", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("context_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task_ids", sa.JSON, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("running_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_executions_trigger", "cloaca_executions", ["trigger_name", "started_at"])
    op.create_index("ix_cloaca_executions_status", "cloaca_executions", ["status", "started_at"])
    op.create_index("ix_cloaca_executions_started", "cloaca_executions", ["started_at"])
    op.create_table(
        "cloaca_claims",
        sa.Column("trigger_name", sa.String(200), primary_key=True),
        sa.Column("context_hash", sa.String(64), primary_key=True),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("claimed_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_claims_execution", "cloaca_claims", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_cloaca_claims_execution", table_name="cloaca_claims")
    op.drop_table("cloaca_claims")
    op.drop_index("ix_cloaca_executions_started", table_name="cloaca_executions")
    op.drop_index("ix_cloaca_executions_status", table_name="cloaca_executions")
    op.drop_index("ix_cloaca_executions_trigger", table_name="cloaca_executions")
    op.drop_table("cloaca_executions")
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.drop_column("dedup_count")
