"""Beat + worker as separate processes against Redis: polls happen on time, alone, and survive errors."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from cloaca_celery.sqlstore import SqlStore
from tests.e2e.harness import CeleryProject, app_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _times(client: Any, key: str) -> list[float]:
    return [float(x) for x in client.lrange(key, 0, -1)]


def test_sub_second_triggers_are_polled_about_once_per_interval(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str
) -> None:
    project = launch("e2e_app", **app_env(redis_url, store_url, "every_100ms,every_500ms"))
    project.worker(concurrency=4)
    project.beat()
    wait_until(lambda: len(_times(redis_client, "polls:every_500ms")) >= 16, 40, "16 polls at 500ms",
               project)
    # The first polls pay for the pool's start-up; judge the steady state after them.
    slow = _times(redis_client, "polls:every_500ms")[4:]
    fast = [t for t in _times(redis_client, "polls:every_100ms") if t > slow[0]]
    fast_gaps = [b - a for a, b in itertools.pairwise(fast)]
    slow_gaps = [b - a for a, b in itertools.pairwise(slow)]
    assert 0.07 <= statistics.median(fast_gaps) <= 0.15, fast_gaps
    assert 0.4 <= statistics.median(slow_gaps) <= 0.6, slow_gaps
    # About once per interval over the window, never doubled:
    rate = (len(slow) - 1) / (slow[-1] - slow[0])
    assert 1.6 <= rate <= 2.4, f"{rate:.2f} polls/s of a 500ms trigger"
    fast_rate = (len(fast) - 1) / (fast[-1] - fast[0])
    assert 7.0 <= fast_rate <= 12.0, f"{fast_rate:.2f} polls/s of a 100ms trigger"


def test_a_slow_poll_never_overlaps_the_next_poll_of_the_same_trigger(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str
) -> None:
    project = launch("e2e_app", **app_env(redis_url, store_url, "slow"))
    project.worker(concurrency=4)
    project.beat()
    wait_until(lambda: redis_client.llen("polls:slow") >= 4, 40, "4 slow polls", project)
    spans = sorted(json.loads(x) for x in redis_client.lrange("polls:slow", 0, -1))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"polls overlap: {spans}"


def test_polls_that_cannot_run_in_time_expire_instead_of_piling_up(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str
) -> None:
    project = launch(
        "e2e_app", **app_env(redis_url, store_url, "every_500ms", E2E_POLL_QUEUE="e2e.polls")
    )
    project.worker(concurrency=2, name="dispatcher")  # default queue only: dispatch, no polls
    project.beat()
    wait_until(lambda: redis_client.llen("e2e.polls") >= 8, 40, "8 polls waiting in e2e.polls", project)
    waiting = redis_client.llen("e2e.polls")
    poller = project.worker("-Q", "e2e.polls", concurrency=2, name="poller")
    poller.wait_for_log("ready", timeout=30)
    # The queue is first in, first out: once three polls have run, the backlog is behind them.
    wait_until(lambda: redis_client.llen("slots:every_500ms") >= 3, 20, "polling to resume", project)
    assert waiting >= 8
    # Everything that queued up during the outage expired: only polls sent within their own
    # slot ran (a poll may start until half an interval after it was sent), none seconds old.
    slots = [json.loads(x) for x in redis_client.lrange("slots:every_500ms", 0, -1)]
    stale = [round(p["t"] - p["due"], 2) for p in slots if p["t"] - p["due"] > 1.0]
    assert stale == [], f"polls ran this long after their slot ({waiting} had queued): {stale}"


def test_errors_wrong_types_and_hangs_are_recorded_and_polling_goes_on(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str
) -> None:
    project = launch(
        "e2e_app",
        **app_env(redis_url, store_url, "raises,wrong_type,hangs", E2E_POLL_TIME_LIMIT="1s"),
    )
    worker = project.worker(concurrency=4)
    project.beat()
    wait_until(lambda: redis_client.llen("polls:raises") >= 4, 40, "4 polls of 'raises'", project)
    wait_until(lambda: redis_client.llen("polls:wrong_type") >= 4, 40, "4 polls of 'wrong_type'", project)
    wait_until(lambda: redis_client.llen("polls:hangs") >= 3, 40, "3 polls of 'hangs'", project)
    store = SqlStore(store_url)
    try:
        raises = store.get_schedule("raises")
        wrong = store.get_schedule("wrong_type")
        hangs = wait_until(lambda: (s := store.get_schedule("hangs"))["consecutive_errors"] >= 2 and s,
                           20, "two timed-out polls of 'hangs'", project)
    finally:
        store.close()
    assert raises["consecutive_errors"] >= 3
    assert "boom from the raises trigger" in raises["last_error"]
    assert wrong["consecutive_errors"] >= 3
    assert "trigger 'wrong_type' returned str" in wrong["last_error"]
    assert "timed out after 1s" in hangs["last_error"]
    log = worker.log()
    assert "raises: poll failed: RuntimeError: boom from the raises trigger" in log
    assert "wrong_type: poll failed" in log
    assert "hangs: poll timed out after 1s" in log
    # One traceback for the first failure of a trigger, then one line per failure.
    assert log.count("Traceback") <= 3 + log.count("hangs: poll timed out")
