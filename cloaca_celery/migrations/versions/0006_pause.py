"""Pause notes: who disabled a trigger, when and why.

``cloaca_schedules`` gains ``paused_at`` (the store's clock when it was
disabled), ``paused_by`` and ``pause_note``; all ``NULL`` while a trigger is
enabled (rows already disabled keep ``NULL``: nobody recorded why). A
downgrade drops the three columns and keeps ``enabled`` as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.add_column(sa.Column("paused_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("paused_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("pause_note", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.drop_column("pause_note")
        batch.drop_column("paused_by")
        batch.drop_column("paused_at")
