"""Trigger schedules.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cloaca_schedules",
        sa.Column("trigger_name", sa.String(200), primary_key=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("poll_interval", sa.Double, nullable=False),
        sa.Column("allow_concurrent", sa.Boolean, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("registered", sa.Boolean, nullable=False),
        sa.Column("next_poll_at", sa.Double, nullable=False),
        sa.Column("poll_lease_until", sa.Double, nullable=True),
        sa.Column("poll_token", sa.String(36), nullable=True),
        sa.Column("last_poll_at", UTCDateTime, nullable=True),
        sa.Column("last_fire_at", UTCDateTime, nullable=True),
        sa.Column("consecutive_errors", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", UTCDateTime, nullable=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("state_version", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index(
        "ix_cloaca_schedules_due", "cloaca_schedules", ["enabled", "registered", "next_poll_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_cloaca_schedules_due", table_name="cloaca_schedules")
    op.drop_table("cloaca_schedules")
