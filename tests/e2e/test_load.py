"""Under load, polling saturates instead of collapsing (issue 15, point 0), with real processes.

One ``celery worker`` (solo, or prefork ``-c 2`` with ``worker_prefetch_multiplier=64``), one
``celery beat``, Redis, a PostgreSQL store. First the worker's bare-Celery rate is measured in
the same test: how many ``load.noop`` tasks a second it drains (each does what a load trigger
does: one Redis round trip). Then skipping triggers at 1 s are enabled: at under half that rate
nearly every due poll runs; at twice that rate the polls run per second stay near it (they do
not collapse to none); when the load drops again, nearly every due poll runs again.

The bounds are generous (a machine busy with other tests must not cross them); the figures
seen are printed (``pytest -s``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from cloaca_celery.sqlstore import SqlStore
from tests.e2e.harness import CeleryProject, wait_until
from tests.services import POSTGRES_URL, need_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

REGISTERED = 2400
WARM_UP = 4.0
WINDOW = 8
HALF = 0.5
"""The light load, as a share of the bare rate."""
OVER_SHARE = 0.5
"""Overloaded (twice the bare rate due), at least this share of the bare rate runs (the aim is 0.9)."""


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    """A PostgreSQL schema of the test's own."""
    need_postgres()
    schema = f"cloaca_load_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _total(client: Any, key: str, seconds: range | None = None) -> int:
    counts = {int(k): int(v) for k, v in client.hgetall(key).items()}
    return sum(v for k, v in counts.items() if seconds is None or k in seconds)


def bare_rate(client: Any, redis_url: str, project: CeleryProject, tasks: int = 3000) -> float:
    """No-op tasks a second the worker drains from a backlog, between 10% and 90% of it."""
    sender = Celery("load_sender", broker=redis_url)
    with sender.producer_or_acquire() as producer:
        for _ in range(tasks):
            sender.send_task("load.noop", producer=producer, ignore_result=True)
    samples: list[tuple[float, int]] = []

    def drained() -> bool:
        samples.append((time.monotonic(), _total(client, "noops")))
        return samples[-1][1] >= tasks

    wait_until(drained, 60, f"{tasks} no-op tasks to run", project)
    low = next(s for s in samples if s[1] >= tasks * 0.1)
    high = next(s for s in samples if s[1] >= tasks * 0.9)
    return (high[1] - low[1]) / (high[0] - low[0])


def enable_first(store: SqlStore, count: int, enabled: set[str]) -> set[str]:
    """Enable ``load-0000`` .. up to ``count`` triggers, disable the rest (only the rows that change)."""
    wanted = {f"load-{i:04d}" for i in range(count)}
    for name in sorted(enabled - wanted):
        store.set_enabled(name, False)
    for name in sorted(wanted - enabled):
        store.set_enabled(name, True)
    return wanted


def polls_per_second(client: Any) -> float:
    """Evaluations a second over ``WINDOW`` whole seconds, after ``WARM_UP``."""
    time.sleep(WARM_UP)
    first = int(time.time()) + 1
    time.sleep(first + WINDOW + 0.3 - time.time())  # the last second's counts have arrived
    return _total(client, "evals", range(first, first + WINDOW)) / WINDOW


@pytest.mark.parametrize("pool", ["solo", "prefork-prefetch-64"])
def test_polling_saturates_under_load_and_recovers(
    pool: str, launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any,
    pg_store_url: str, tmp_path: Path,
) -> None:
    project = launch("e2e_load", E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=pg_store_url,
                     E2E_LOAD_TRIGGERS=str(REGISTERED), E2E_LOAD_INTERVAL="1",
                     E2E_PREFETCH="64" if pool != "solo" else "4")
    worker = (project.worker("-P", "solo", concurrency=1) if pool == "solo"
              else project.worker(concurrency=2))
    worker.wait_for_log("ready", timeout=60)
    store = SqlStore(create_engine(pg_store_url))
    try:
        enabled = enable_first(store, 0, {f"load-{i:04d}" for i in range(REGISTERED)})
        bare = bare_rate(redis_client, redis_url, project)
        half = max(20, int(bare * HALF))
        over = min(REGISTERED, int(bare * 2))
        enabled = enable_first(store, half, enabled)
        project.beat()
        half_rate = polls_per_second(redis_client)
        enabled = enable_first(store, over, enabled)
        over_rate = polls_per_second(redis_client)
        enabled = enable_first(store, half, enabled)
        recovered_rate = polls_per_second(redis_client)
    finally:
        store.dispose()
    figures = (f"{pool}: bare {bare:.0f} tasks/s; {half} triggers: {half_rate / half:.3f} of due polls run; "
               f"{over} triggers: {over_rate:.0f} polls/s ({over_rate / bare:.2f} of bare); "
               f"back to {half}: {recovered_rate / half:.3f}")
    print(figures)
    assert half_rate >= 0.95 * half, figures
    assert over_rate >= OVER_SHARE * bare, figures
    assert recovered_rate >= 0.95 * half, figures
