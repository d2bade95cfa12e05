"""Fixtures for end-to-end tests: a Redis database per test, a process launcher, the test's store.

The helpers they use and tests call (``app_env``, ``records``, ``history``,
``wait_until``...) are in ``tests/e2e/harness.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloaca_celery import DefaultRunner
from tests.e2e.harness import CeleryProject
from tests.support.services import REDIS_HOST, REDIS_PORT, need_redis, postgres_url_in

LOCK_TTL = 900


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own (1-15, flushed before and after the test).

    The database is reserved with a lock key in database 0, so two test runs
    on one machine never share one.
    """
    need_redis()
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    owner = f"{os.getpid()}"
    db = None
    for _ in range(600):
        for candidate in range(1, 16):
            if admin.set(f"cloaca-tests:db:{candidate}", owner, nx=True, ex=LOCK_TTL):
                db = candidate
                break
        if db is not None:
            break
        time.sleep(0.5)
    if db is None:
        pytest.fail("no free Redis database (1-15) for this test: other test runs hold them all")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()
        admin.delete(f"cloaca-tests:db:{db}")
        admin.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def launch(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., CeleryProject]]:
    """``launch(module, **env)`` gives a CeleryProject; all its processes stop after the test.

    A test's Redis database is set up first when the test uses one, so that it is
    released only after every process that used it has stopped.
    """
    if "redis_url" in request.fixturenames:
        request.getfixturevalue("redis_url")
    projects: list[CeleryProject] = []

    def make(module: str, **env: str) -> CeleryProject:
        project = CeleryProject(tmp_path, module, {k: str(v) for k, v in env.items()})
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.stop_all()


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of the test's SQLite store file (the processes create its tables when they start).

    A test parametrized indirectly with ``"postgresql"`` gets its own PostgreSQL schema instead.
    """
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("pg_store_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def runner(store_url: str) -> Iterator[DefaultRunner]:
    """A ``DefaultRunner`` on the store the processes share (what an operator's script uses)."""
    runner = DefaultRunner(store_url)
    yield runner
    runner.store.close()


@pytest.fixture
def pg_store_url(pg_schema: str) -> str:
    """A store in a PostgreSQL schema of the test's own (the store's clock is the server's)."""
    return postgres_url_in(pg_schema)
