"""Liveness by lease: execution deadlines, pending ends and step rows; claims no longer expire by time.

``cloaca_executions`` gains ``deadline_at`` (when the sweep must look at an
execution, epoch seconds on the database's clock; index ``(status,
deadline_at)``) and ``ending_status`` (an end requested while steps still
ran). ``cloaca_steps`` holds one row per step task that started.
``cloaca_claims.expires_at`` goes: a claim is held until its execution ends.

An execution still active when this runs gets a deadline a minute later, so
the sweep looks at it soon (by the rules of the new version); an ended one
gets none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS
from cloaca_celery.store import ACTIVE_STATUSES, clock_query

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FIRST_LOOK = 60.0
"""Seconds after the migration when the sweep first looks at an execution that was active."""

DOWNGRADE_CLAIM_TTL = 6 * 3600.0
"""A downgrade's ``expires_at`` of the claims held: ``claimed_at`` plus the old default claim TTL."""


def upgrade() -> None:
    with op.batch_alter_table("cloaca_executions") as batch:
        batch.add_column(sa.Column("deadline_at", sa.Double, nullable=True))
        batch.add_column(sa.Column("ending_status", sa.String(16), nullable=True))
        batch.create_index("ix_cloaca_executions_deadline", ["status", "deadline_at"])
    bind = op.get_bind()
    now = float(bind.execute(sa.text(clock_query(bind.dialect.name))).scalar_one())
    executions = sa.table(
        "cloaca_executions", sa.column("status", sa.String), sa.column("deadline_at", sa.Double)
    )
    active = executions.c.status.in_(ACTIVE_STATUSES)
    bind.execute(executions.update().where(active).values(deadline_at=now + FIRST_LOOK))
    op.create_table(
        "cloaca_steps",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("waiting_until", sa.Double, nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_steps_execution", "cloaca_steps", ["execution_id"])
    with op.batch_alter_table("cloaca_claims") as batch:
        batch.drop_column("expires_at")


def downgrade() -> None:
    with op.batch_alter_table("cloaca_claims") as batch:
        batch.add_column(sa.Column("expires_at", sa.Double, nullable=True))
    claims = sa.table("cloaca_claims", sa.column("claimed_at", sa.Double), sa.column("expires_at", sa.Double))
    op.get_bind().execute(claims.update().values(expires_at=claims.c.claimed_at + DOWNGRADE_CLAIM_TTL))
    with op.batch_alter_table("cloaca_claims") as batch:
        batch.alter_column("expires_at", existing_type=sa.Double, nullable=False)
    op.drop_index("ix_cloaca_steps_execution", table_name="cloaca_steps")
    op.drop_table("cloaca_steps")
    with op.batch_alter_table("cloaca_executions") as batch:
        batch.drop_index("ix_cloaca_executions_deadline")
        batch.drop_column("ending_status")
        batch.drop_column("deadline_at")
