"""Fixtures for end-to-end tests: a Redis database per test and a process launcher."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import CeleryProject
from tests.services import REDIS_HOST, REDIS_PORT, need_redis

_databases = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own (1-15, flushed before and after the test)."""
    need_redis()
    import redis

    db = next(_databases)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., CeleryProject]]:
    """``launch(module, **env)`` gives a CeleryProject; all its processes stop after the test."""
    projects: list[CeleryProject] = []

    def make(module: str, **env: str) -> CeleryProject:
        project = CeleryProject(tmp_path, module, {k: str(v) for k, v in env.items()})
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.stop_all()
