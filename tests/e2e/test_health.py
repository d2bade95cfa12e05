"""Health counts with real processes (issue 14, points 3 and 7): what the store says equals what the
triggers and steps noted themselves, after a worker and beat ran and stopped."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloaca_celery.counters import HealthCounts, total
from cloaca_celery.sqlstore import SqlStore
from tests.e2e.harness import CeleryProject, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.close()


def _answers(client: Any, trigger: str) -> Counter[str]:
    return Counter(x.decode() for x in client.lrange(f"answers:{trigger}", 0, -1))


def _counts(store: SqlStore, trigger: str, since: datetime) -> HealthCounts:
    return total(store.health(trigger, since), trigger, since)


def test_the_counts_equal_what_the_triggers_and_steps_noted(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store: SqlStore,
) -> None:
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    project = launch("e2e_health", E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=str(store.engine.url))
    metrics = project.command("metrics", "cloaca", "metrics", "--port", "0")
    metrics.wait_for_log("/metrics", timeout=60)
    worker = project.worker(concurrency=3)
    beat = project.beat()
    redis_client.set("go", 1)
    wait_until(lambda: _answers(redis_client, "hc_mixed")["fire"] >= 6
               and _answers(redis_client, "hc_mixed")["error"] >= 2, 90, "6 fires and 2 errors", project)
    # While they run, the counts reach the store every flush interval (1 s here), not per poll.
    wait_until(lambda: _counts(store, "hc_mixed", since).polls >= 10, 30, "counts in the store", project)
    redis_client.delete("go")
    time.sleep(1.0)  # the polls already sent run without noting anything
    beat.stop()
    wait_until(lambda: redis_client.llen("firsts:hc_mixed") >= _answers(redis_client, "hc_mixed")["fire"]
               and redis_client.llen("firsts:hc_held") >= 1, 60, "every first step", project)
    time.sleep(2.5)  # the last pending fire of hc_held starts when its holder ends (1 s)
    worker.stop(timeout=60)  # a warm shutdown writes what each process counted since its last flush
    assert worker.popen.returncode == 0, worker.log()[-3000:]

    mixed, noted = _counts(store, "hc_mixed", since), _answers(redis_client, "hc_mixed")
    assert (mixed.fires, mixed.errors) == (noted["fire"], noted["error"])
    # Skips include the polls after "go" was deleted: at least those noted, and every poll is one outcome.
    assert mixed.skips >= noted["skip"]
    assert mixed.polls == mixed.skips + mixed.fires + mixed.errors
    assert sum(mixed.held.values()) == 0
    assert mixed.latency_seconds.count == redis_client.llen("firsts:hc_mixed") == noted["fire"]
    assert mixed.poll_seconds.count == mixed.polls
    assert 0 < mixed.latency_seconds.largest < 30
    assert mixed.last_poll_at is not None

    held, fired = _counts(store, "hc_held", since), _answers(redis_client, "hc_held")["fire"]
    assert held.fires + held.held_buffer_one == fired
    assert held.held_buffer_one == held.pending >= 1
    assert held.errors == held.held_skip == held.dropped == 0  # buffer_one replaces, drops nothing
    # A pending fire that starts later is no fire of a poll: first steps are the fires plus those.
    assert held.fires <= redis_client.llen("firsts:hc_held") == held.latency_seconds.count
    schedule = store.get_schedule("hc_held")
    assert schedule["consecutive_errors"] == 0

    # Prometheus reads the same sums from the store, whichever processes counted them.
    url = next(word for word in metrics.log().split() if word.endswith("/metrics"))
    with urllib.request.urlopen(url, timeout=30) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    polls = {(s.labels["trigger"], s.labels["outcome"]): s.value
             for s in families["cloaca_trigger_polls"].samples if s.name.endswith("_total")}
    assert polls[("hc_mixed", "fired")] == mixed.fires
    assert polls[("hc_mixed", "error")] == mixed.errors
    assert polls[("hc_mixed", "skipped")] == mixed.skips
    assert polls[("hc_held", "held")] == held.held_buffer_one
    latency = {s.labels["trigger"]: s.value for s in families["cloaca_trigger_fire_latency_seconds"].samples
               if s.name.endswith("_count")}
    assert latency["hc_mixed"] == mixed.latency_seconds.count
