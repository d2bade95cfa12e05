"""SQLite store files with cloaca's tables already in place, without running the migrations each time.

Running the Alembic migrations on a fresh SQLite file takes a fifth of a
second; a suite that gives every test a file of its own would spend most of
its time there. :func:`migrated_sqlite` runs them once per test process, into
a template file, and copies that file for each test. The migrations
themselves are tested on empty databases (``tests/contract/test_migrations.py``).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    from sqlalchemy import create_engine

    from cloaca_celery.migrations import upgrade

    folder = Path(tempfile.mkdtemp(prefix="cloaca-sqlite-template-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "template.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return path


def migrated_sqlite(path: Path) -> str:
    """Write a SQLite file with cloaca's tables (newest revision, no rows) at ``path``; return its URL."""
    assert not path.exists(), f"{path} exists: a migrated copy would replace it"
    shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
