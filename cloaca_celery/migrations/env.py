"""Alembic environment for cloaca's tables: always run through cloaca_celery.migrations.upgrade."""

from __future__ import annotations

from alembic import context

from cloaca_celery.migrations import VERSION_TABLE
from cloaca_celery.sqlschema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "cloaca's migrations run through cloaca_celery.migrations.upgrade(engine) "
        "(or `celery -A proj cloaca migrate`), which passes the connection"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
