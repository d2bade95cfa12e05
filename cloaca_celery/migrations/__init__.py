"""Alembic migrations of the cloaca tables, shipped in the package.

:func:`upgrade` brings a database to the newest revision. Several processes
may call it at once (workers and beats starting together): a database lock
(PostgreSQL advisory lock, MySQL ``GET_LOCK``, SQLite's write lock) lets one
migrate while the others wait and then find nothing to do. The version is
kept in ``cloaca_alembic_version`` so it never mixes with the project's own
Alembic history.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

VERSION_TABLE = "cloaca_alembic_version"
_HERE = Path(__file__).resolve().parent
_LOCK_KEY = 7_361_024_918  # any constant: the advisory lock id of cloaca's migrations


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision`` (default: the newest)."""
    target = head_revision() if revision == "head" else revision
    with engine.connect() as probe:
        if current_revision(probe) == target:
            return
    dialect = engine.dialect.name
    if dialect in ("mysql", "mariadb"):
        # MySQL runs DDL outside transactions: hold a named lock on a connection of
        # its own until the migrating transaction has committed.
        name = f"cloaca_migrations:{engine.url.database or ''}"[:64]
        with engine.connect() as lock:
            lock.execute(text("SELECT GET_LOCK(:name, 120)"), {"name": name})
            try:
                with engine.begin() as connection:
                    command.upgrade(alembic_config(connection), revision)
            finally:
                lock.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        return
    with engine.begin() as connection:
        if dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)
