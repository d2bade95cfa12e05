"""Overlap policies and dedup keys: a schedule's policy, an execution's work key, pending fires.

``cloaca_schedules`` gains ``overlap`` (the trigger's overlap policy; rows of
``allow_concurrent`` triggers get ``allow``, the others ``skip``, what their
flag meant). ``cloaca_executions`` gains ``dedup_hash`` (the hash of the work's
key; ``NULL`` in the rows already there, read as their context hash, which is
what their claims hold). ``cloaca_pending`` holds the fires an overlap policy
keeps waiting until the execution holding their key ends.

A downgrade drops the pending fires (0004 has nowhere to keep them) and keys
each claim held by the context hash of its execution again, so the older
version still keeps that context from firing twice (a claim whose context
another claim holds already is dropped: the context stays claimed).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloaca_celery.sqlschema import MYSQL_TABLE_OPTIONS
from cloaca_celery.store import claims_by_context

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.add_column(sa.Column("overlap", sa.String(16), nullable=False, server_default="skip"))
    schedules = sa.table(
        "cloaca_schedules", sa.column("allow_concurrent", sa.Boolean), sa.column("overlap", sa.String)
    )
    op.get_bind().execute(
        schedules.update().where(schedules.c.allow_concurrent.is_(True)).values(overlap="allow")
    )
    with op.batch_alter_table("cloaca_executions") as batch:
        batch.add_column(sa.Column("dedup_hash", sa.String(64), nullable=True))
    op.create_table(
        "cloaca_pending",
        sa.Column("pending_id", sa.String(36), primary_key=True),
        sa.Column("trigger_name", sa.String(200), nullable=False),
        sa.Column("dedup_hash", sa.String(64), nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("context_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_cloaca_pending_key", "cloaca_pending", ["trigger_name", "dedup_hash", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_cloaca_pending_key", table_name="cloaca_pending")
    op.drop_table("cloaca_pending")
    bind = op.get_bind()
    claims = sa.table(
        "cloaca_claims", sa.column("claim_key", sa.String), sa.column("trigger_name", sa.String),
        sa.column("context_hash", sa.String), sa.column("execution_id", sa.String),
    )
    executions = sa.table(
        "cloaca_executions", sa.column("execution_id", sa.String), sa.column("context_hash", sa.String)
    )
    keyed_by_work = bind.execute(
        sa.select(claims.c.claim_key, claims.c.trigger_name, executions.c.context_hash)
        .join(executions, executions.c.execution_id == claims.c.execution_id)
        .where(claims.c.context_hash != executions.c.context_hash)
    ).all()
    taken = bind.execute(sa.select(claims.c.claim_key)).scalars().all()
    for key, values in claims_by_context([tuple(row) for row in keyed_by_work], taken):
        this_claim = claims.c.claim_key == key
        if values is None:
            bind.execute(claims.delete().where(this_claim))
        else:
            bind.execute(claims.update().where(this_claim).values(**values))
    with op.batch_alter_table("cloaca_executions") as batch:
        batch.drop_column("dedup_hash")
    with op.batch_alter_table("cloaca_schedules") as batch:
        batch.drop_column("overlap")
