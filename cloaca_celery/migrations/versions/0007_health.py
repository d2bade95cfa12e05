"""Trigger health counts: ``cloaca_health``, one row per (trigger, minute, process).

Each process writes its own totals of a trigger's minute (polls, skips,
fires, held-back fires by policy, pending, cancelled, dropped, errors, late
polls, and histograms of poll durations and fire -> first step latencies);
readers sum the rows of a minute. A downgrade drops the counts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COUNTS = (
    "polls", "skips", "fires", "held_skip", "held_buffer_one", "held_buffer_all", "held_cancel_other",
    "held_terminate_other", "pending", "cancelled", "dropped", "errors", "late",
)


def upgrade() -> None:
    op.create_table(
        "cloaca_health",
        sa.Column("health_key", sa.String(320), primary_key=True),
        sa.Column("trigger_name", sa.String(200), nullable=False),
        sa.Column("minute", UTCDateTime, nullable=False),
        sa.Column("process", sa.String(100), nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in COUNTS),
        sa.Column("poll_buckets", sa.JSON, nullable=False),
        sa.Column("poll_seconds_sum", sa.Double, nullable=False),
        sa.Column("poll_seconds_max", sa.Double, nullable=False),
        sa.Column("latency_buckets", sa.JSON, nullable=False),
        sa.Column("latency_seconds_sum", sa.Double, nullable=False),
        sa.Column("latency_seconds_max", sa.Double, nullable=False),
        sa.Column("last_poll_at", UTCDateTime, nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_health_trigger", "cloaca_health", ["trigger_name", "minute"])
    op.create_index("ix_cloaca_health_minute", "cloaca_health", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_cloaca_health_minute", table_name="cloaca_health")
    op.drop_index("ix_cloaca_health_trigger", table_name="cloaca_health")
    op.drop_table("cloaca_health")
