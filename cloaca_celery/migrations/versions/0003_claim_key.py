"""Claims keyed by ``claim_key``, as django_cloaca's ``TriggerClaim`` is.

``claim_key`` (``"<trigger>\\x1f<hash>"``, filled in for the claims already
held) becomes the primary key, and the pair stays unique as
``uq_cloaca_claims_key``: the claims table of both stores is then one table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PRIMARY_KEY = "cloaca_claims_pkey"
# SQLite's primary key has no name: the convention gives it one that batch mode can drop.
NAMING = {"pk": PRIMARY_KEY}


def upgrade() -> None:
    with op.batch_alter_table("cloaca_claims") as batch:
        batch.add_column(sa.Column("claim_key", sa.String(265), nullable=True))
    pairs = sa.table(
        "cloaca_claims", sa.column("claim_key", sa.String), sa.column("trigger_name", sa.String),
        sa.column("context_hash", sa.String),
    )
    op.execute(pairs.update().values(claim_key=pairs.c.trigger_name + "\x1f" + pairs.c.context_hash))
    with _new_primary_key(["claim_key"]) as batch:
        batch.alter_column("claim_key", existing_type=sa.String(265), nullable=False)
        batch.create_unique_constraint("uq_cloaca_claims_key", ["trigger_name", "context_hash"])


def downgrade() -> None:
    with _new_primary_key(["trigger_name", "context_hash"]) as batch:
        batch.drop_constraint("uq_cloaca_claims_key", type_="unique")
        batch.drop_column("claim_key")


@contextmanager
def _new_primary_key(columns: list[str]) -> Iterator[BatchOperations]:
    """Alter ``cloaca_claims`` in a batch that also swaps its primary key for one on ``columns``."""
    old = sa.inspect(op.get_bind()).get_pk_constraint("cloaca_claims")["name"] or PRIMARY_KEY
    with op.batch_alter_table("cloaca_claims", naming_convention=NAMING) as batch:
        batch.drop_constraint(old, type_="primary")
        yield batch
        batch.create_primary_key(PRIMARY_KEY, columns)
