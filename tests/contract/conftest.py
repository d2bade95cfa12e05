"""Fixtures of the store contract suite: one isolated database per test, on every backend.

``backend`` is parametrized over ``sqlite`` (a file in ``tmp_path``),
``postgresql`` (a schema of its own, ``cloaca_t_<hex>``, reached through the
connections' ``search_path``) and ``mariadb`` (a database of its own,
``cloaca_t_<hex>``). It hands out as many :class:`SqlStore` objects (each on
its own engine, as separate processes would have) as a test needs, and
drops the schema or database afterwards. ``store`` is one such store with the
schema in place.

A test that documents a backend's bug is marked
``@pytest.mark.known_bug("mariadb", reason="BUG: ...")``: on that backend it
becomes a strict xfail (so it fails loudly once the bug is fixed), and it
runs as an ordinary test on the others.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cloaca_celery.sqlstore import SqlStore
from tests.support.services import MARIADB_URL, POSTGRES_URL, need_mariadb, postgres_schema
from tests.support.sqlite import migrated_sqlite

ALL_BACKENDS = ("sqlite", "postgresql", "mariadb", "django")
BACKENDS = tuple(
    name.strip() for name in os.environ.get("CLOACA_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",")
    if name.strip()
)
"""``django`` is django_cloaca's ORM store on the Django test database (SQLite, or
PostgreSQL with CLOACA_TEST_DJANGO_DB=postgresql). ``CLOACA_TEST_BACKENDS=sqlite``
(what ``make test-quick`` sets) runs the suite on fewer of them."""
if not BACKENDS or set(BACKENDS) - set(ALL_BACKENDS):
    raise pytest.UsageError(
        f"CLOACA_TEST_BACKENDS={os.environ.get('CLOACA_TEST_BACKENDS')!r}: "
        f"name some of {', '.join(ALL_BACKENDS)}, separated by commas"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "known_bug(*backends, reason): strict xfail on the named backends (a bug the contract suite found)",
    )
    config.addinivalue_line("markers", "sql_only: looks inside SqlStore (SQLAlchemy); not run on django")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_django = callspec is not None and callspec.params.get("backend") == "django"
        sql_only = item.get_closest_marker("sql_only") or item.module.__name__.endswith("test_migrations")
        if on_django and sql_only:
            dropped.append(item)  # SQLAlchemy internals or Alembic: not part of the Store contract
        else:
            if on_django:
                item.add_marker(pytest.mark.django_db(transaction=True))
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "backend" not in callspec.params:
            continue
        for mark in item.iter_markers("known_bug"):
            if callspec.params["backend"] in mark.args:
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.kwargs["reason"]))


def new_name() -> str:
    return f"cloaca_t_{uuid.uuid4().hex[:10]}"


@dataclass
class Backend:
    """One isolated database on one backend, and the engines and stores opened on it."""

    name: str
    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    engines: list[Engine] = field(default_factory=list)

    def engine(self) -> Engine:
        """A plain SQLAlchemy engine on the isolated database (for raw SQL and inspection)."""
        engine = create_engine(self.url, connect_args=dict(self.connect_args))
        self.engines.append(engine)
        return engine

    def store(self) -> SqlStore:
        """A new store on a new engine, as another process would open it (``django``: a DjangoStore).

        SQLite and MariaDB go through the URL (the engine cloaca tunes itself:
        WAL and ``BEGIN IMMEDIATE`` on SQLite); PostgreSQL gets an engine whose
        connections use the test's schema, passed as ``SqlStore(engine)``.
        """
        if self.name == "django":
            from django_cloaca.store import DjangoStore

            return DjangoStore()  # type: ignore[return-value]
        store = SqlStore(self.engine()) if self.name == "postgresql" else SqlStore(self.url)
        self.engines.append(store.engine)
        return store

    def dispose(self) -> None:
        if self.name == "django":
            from django.db import connections

            connections.close_all()
        for engine in self.engines:
            engine.dispose()
        self.engines.clear()


def _sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield backend
    finally:
        backend.dispose()


def _postgresql_backend() -> Iterator[Backend]:
    with postgres_schema() as schema:
        backend = Backend("postgresql", POSTGRES_URL, {"options": f"-csearch_path={schema}"})
        try:
            yield backend
        finally:
            backend.dispose()


def _mariadb_backend() -> Iterator[Backend]:
    need_mariadb()
    database = new_name()
    admin = create_engine(MARIADB_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{database}`"))
    url = make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False)
    backend = Backend("mariadb", url)
    try:
        yield backend
    finally:
        backend.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty, isolated database (no cloaca tables yet) on each backend."""
    if request.param == "sqlite":
        yield from _sqlite_backend(tmp_path)
    elif request.param == "django":
        backend = Backend("django", "django://default")
        try:
            yield backend
        finally:
            backend.dispose()
    elif request.param == "postgresql":
        yield from _postgresql_backend()
    else:
        yield from _mariadb_backend()


@pytest.fixture
def store(backend: Backend) -> SqlStore:
    """A ``SqlStore`` with its schema in place (disposed with ``backend``)."""
    if backend.name == "sqlite":
        migrated_sqlite(Path(backend.url.removeprefix("sqlite:///")))
    sql_store = backend.store()
    sql_store.ensure_schema()
    return sql_store


@pytest.fixture
def postgresql_store() -> Iterator[SqlStore]:
    """A ``SqlStore`` in a PostgreSQL schema of its own, for PostgreSQL-only tests."""
    for backend in _postgresql_backend():
        sql_store = backend.store()
        sql_store.ensure_schema()
        yield sql_store


@pytest.fixture
def mariadb_backend() -> Iterator[Backend]:
    """An empty MariaDB database of its own, for MariaDB-only tests."""
    yield from _mariadb_backend()
