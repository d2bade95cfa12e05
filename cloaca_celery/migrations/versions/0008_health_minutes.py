"""Health counts a row per (minute, process, group of triggers): ``cloaca_health_minutes``.

Revision 0007 wrote a row per (trigger, minute, process): a trigger polled
once in a minute cost a store row of its own, as many rows as the polls.
``cloaca_health_minutes`` holds one process's counts of a minute for a group
of triggers (16 groups by a hash of the name), a JSON object by trigger, so a
flush writes at most 16 rows. The upgrade copies the counts of
``cloaca_health`` into it, then drops ``cloaca_health``; a downgrade builds
``cloaca_health`` again, empty (it drops the counts, as 0007's downgrade does).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime
from cloaca_celery.store import health_rows_from_per_trigger

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COUNTS = (
    "polls", "skips", "fires", "held_skip", "held_buffer_one", "held_buffer_all", "held_cancel_other",
    "held_terminate_other", "pending", "cancelled", "dropped", "errors", "late",
)
BATCH = 500


def _per_trigger_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
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
    ]


def upgrade() -> None:
    minutes = op.create_table(
        "cloaca_health_minutes",
        sa.Column("group_key", sa.String(140), primary_key=True),
        sa.Column("minute", UTCDateTime, nullable=False),
        sa.Column("process", sa.String(100), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("last_poll_at", UTCDateTime, nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_health_min_shard", "cloaca_health_minutes", ["shard", "minute"])
    op.create_index("ix_cloaca_health_min_minute", "cloaca_health_minutes", ["minute"])

    old = sa.Table("cloaca_health", sa.MetaData(), *_per_trigger_columns())
    conn = op.get_bind()
    found = conn.execute(sa.select(old).order_by(old.c.minute, old.c.process)).mappings()
    batch: list[dict[str, object]] = []
    for row in health_rows_from_per_trigger(found):
        batch.append(row)
        if len(batch) >= BATCH:
            conn.execute(sa.insert(minutes), batch)
            batch = []
    if batch:
        conn.execute(sa.insert(minutes), batch)

    op.drop_index("ix_cloaca_health_minute", table_name="cloaca_health")
    op.drop_index("ix_cloaca_health_trigger", table_name="cloaca_health")
    op.drop_table("cloaca_health")


def downgrade() -> None:
    op.create_table("cloaca_health", *_per_trigger_columns(), **MYSQL_TABLE_OPTIONS)
    op.create_index("ix_cloaca_health_trigger", "cloaca_health", ["trigger_name", "minute"])
    op.create_index("ix_cloaca_health_minute", "cloaca_health", ["minute"])
    op.drop_index("ix_cloaca_health_min_minute", table_name="cloaca_health_minutes")
    op.drop_index("ix_cloaca_health_min_shard", table_name="cloaca_health_minutes")
    op.drop_table("cloaca_health_minutes")
