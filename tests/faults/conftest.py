"""Fixtures of the fault-injection suite.

The e2e fixtures are re-exported (``redis_url``: a Redis database of the
test's own; ``launch``: worker and beat processes stopped after the test;
``store_url``: the test's SQLite store file), and ``pg_schema`` comes from
``tests/conftest.py``. Added here: stores on them for the test to read, a
private ``redis-server``, a TCP proxy in front of PostgreSQL and a supervisor
that restarts workers that exit.

Tests name ``launch`` after the fixtures whose resources the processes use:
fixtures are torn down in reverse order, so the processes stop before their
Redis database is flushed and released, or their schema dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from cloaca_celery.sqlstore import SqlStore
from tests.e2e.conftest import launch, redis_client, redis_url, store_url
from tests.e2e.harness import CeleryProject
from tests.faults.helpers import RedisServer, Supervisor, need_redis_server
from tests.faults.proxy import TcpProxy
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_URL, need_postgres

__all__ = ["launch", "redis_client", "redis_url", "store_url"]


@pytest.fixture
def sqlite_store(store_url: str) -> Iterator[SqlStore]:
    """The test's view of the store the processes use (created by the first of them)."""
    store = SqlStore(store_url)
    yield store
    store.close()


@pytest.fixture
def pg_store(pg_schema: str) -> Iterator[SqlStore]:
    """A store on the test's schema, reached directly (never through the proxy)."""
    store = SqlStore(create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={pg_schema}"}))
    store.ensure_schema()
    yield store
    store.close()


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of PostgreSQL, listening; closed after the test."""
    need_postgres()
    proxy = TcpProxy(POSTGRES_HOST, POSTGRES_PORT)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own (never the shared one), running; stopped afterwards."""
    server = RedisServer(need_redis_server(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def supervise(launch: Callable[..., CeleryProject]) -> Iterator[Callable[[CeleryProject], Supervisor]]:
    """``supervise(project)`` gives a Supervisor restarting the project's workers that exit.

    It depends on ``launch``, so the watching ends before the processes are stopped.
    """
    supervisors: list[Supervisor] = []

    def make(project: CeleryProject) -> Supervisor:
        supervisor = Supervisor(project)
        supervisors.append(supervisor)
        return supervisor

    yield make
    for supervisor in supervisors:
        supervisor.stop()
