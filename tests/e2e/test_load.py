"""Under load, polling saturates instead of collapsing (issue 15, point 0), with real processes.

One ``celery worker`` (solo; threads ``-c 4``; or prefork ``-c 2`` with
``worker_prefetch_multiplier=64``), one ``celery beat``, Redis, a PostgreSQL store. First the
worker's bare-Celery rate is measured in the same test: how many ``load.noop`` tasks a second it
drains (each does what a load trigger does: one Redis round trip). Then skipping triggers at 1 s
are enabled: at half that rate nearly every due poll runs; with 8,000 triggers due each second
the polls run per second stay above half the bare rate (batched, they exceed it), never
collapsing to none; when the load drops again, nearly every due poll runs again. The same on a
solo worker with batching off, at a fifth of the bare rate and twice it.

The bounds are generous (a machine busy with other tests must not cross them); the figures
seen are printed (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, create_engine, text

from tests.e2e.harness import CeleryProject, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

REGISTERED = 8000
WARM_UP = 4.0
WINDOW = 8
RECOVERY = 8.0
"""Seconds the workers are given to recover from the overload (its queue drains first)."""
HALF = 0.5
"""The light load, as a share of the bare rate."""
LIGHT_SHARE = 0.95
"""At the light load, at least this share of the due polls runs (the aim is 0.99)."""
LIGHT_SHARE_UNBATCHED = 0.7
"""Unbatched, on a machine shared with other tests: a bound only a collapse crosses (it was 0)."""
OVER_SHARE = 0.5
"""Overloaded (all 8,000 triggers due each second), at least this share of the bare rate runs
(the aim is 0.9; batched, the workers run more polls than bare no-op tasks)."""
OVER_SHARE_UNBATCHED = 0.1
"""Unbatched and overloaded (twice the bare rate due): not none (it used to fall to none)."""


def _total(client: Any, key: str, seconds: range | None = None) -> int:
    counts = {int(k): int(v) for k, v in client.hgetall(key).items()}
    return sum(v for k, v in counts.items() if seconds is None or k in seconds)


def bare_rate(client: Any, redis_url: str, project: CeleryProject, tasks: int = 3000) -> float:
    """No-op tasks a second the worker drains from a backlog, from the last count seen below 10% of it
    to the first seen at 90% or more.

    The sampling starts (count 0) before the first task is sent: a test process starved by a busy
    machine may see the whole backlog drained at its first look, and the rate is then measured
    from the start (lower, never a division by zero)."""
    sender = Celery("load_sender", broker=redis_url)
    samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
    with sender.producer_or_acquire() as producer:
        for _ in range(tasks):
            sender.send_task("load.noop", producer=producer, ignore_result=True)

    def drained() -> bool:
        samples.append((time.monotonic(), _total(client, "noops")))
        return samples[-1][1] >= tasks

    wait_until(drained, 60, f"{tasks} no-op tasks to run", project)
    high_at = next(i for i, s in enumerate(samples) if s[1] >= tasks * 0.9)
    low = [s for s in samples[:high_at] if s[1] < tasks * 0.1][-1]
    high = samples[high_at]
    return (high[1] - low[1]) / (high[0] - low[0])


def enable_first(engine: Engine, count: int) -> None:
    """Enable ``load-0000`` .. up to ``count`` triggers and disable the rest, as an operator's switch.

    One statement on the schedule table (its ``enabled`` column is the switch
    ``DefaultRunner.set_trigger_enabled`` writes), not thousands of calls.
    """
    with engine.begin() as conn:
        conn.execute(text("UPDATE cloaca_schedules SET enabled = (trigger_name < :cut)"),
                     {"cut": f"load-{count:04d}"})


def polls_per_second(client: Any, warm_up: float = WARM_UP) -> float:
    """Evaluations a second over ``WINDOW`` whole seconds, after ``warm_up``."""
    time.sleep(warm_up)
    first = int(time.time()) + 1
    time.sleep(first + WINDOW + 0.3 - time.time())  # the last second's counts have arrived
    return _total(client, "evals", range(first, first + WINDOW)) / WINDOW


@pytest.mark.parametrize(
    ("pool", "batched"),
    [("solo", True), ("prefork-prefetch-64", True), ("threads", True), ("solo", False)],
    ids=["solo", "prefork-prefetch-64", "threads", "solo-unbatched"],
)
def test_polling_saturates_under_load_and_recovers(
    pool: str, batched: bool, launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any,
    pg_store_url: str, tmp_path: Path,
) -> None:
    project = launch("e2e_load", E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=pg_store_url,
                     E2E_LOAD_TRIGGERS=str(REGISTERED), E2E_LOAD_INTERVAL="1",
                     E2E_PREFETCH="64" if pool != "solo" else "4",
                     E2E_POLL_BATCH_SIZE="50" if batched else "1")
    worker = {
        "solo": lambda: project.worker("-P", "solo", concurrency=1),
        "threads": lambda: project.worker("-P", "threads", concurrency=4),
    }.get(pool, lambda: project.worker(concurrency=2))()
    worker.wait_for_log("ready", timeout=60)
    engine = create_engine(pg_store_url)
    try:
        enable_first(engine, 0)
        bare = bare_rate(redis_client, redis_url, project)
        # Unbatched, a poll costs the worker about two no-op tasks (the poll, and its share of the
        # dispatch that sent it): its light load is a fifth of the bare rate, not a half.
        half = max(20, int(bare * (HALF if batched else HALF / 2.5)))
        over = REGISTERED if batched else min(REGISTERED, int(bare * 2))
        enable_first(engine, half)
        project.beat()
        half_rate = polls_per_second(redis_client)
        enable_first(engine, over)
        over_rate = polls_per_second(redis_client)
        enable_first(engine, half)
        recovered_rate = polls_per_second(redis_client, RECOVERY)
    finally:
        engine.dispose()
    figures = (f"{pool}{'' if batched else ' unbatched'}: bare {bare:.0f} tasks/s; {half} triggers: "
               f"{half_rate / half:.3f} of due polls run; {over} triggers: {over_rate:.0f} polls/s "
               f"({over_rate / bare:.2f} of bare); back to {half}: {recovered_rate / half:.3f}")
    print(figures)
    light = LIGHT_SHARE if batched else LIGHT_SHARE_UNBATCHED
    assert half_rate >= light * half, figures
    assert over_rate >= (OVER_SHARE if batched else OVER_SHARE_UNBATCHED) * bare, figures
    assert recovered_rate >= light * half, figures
