"""The health counters of one process (cloaca_celery/counters.py): counting, flushing, merging."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from cloaca_celery.counters import (
    BUCKETS,
    HEALTH_SHARDS,
    Durations,
    HealthCounter,
    HealthCounts,
    health_shard,
    median,
    merge,
    minute_of,
)
from cloaca_celery.health import assess_schedule

T0 = 1_764_331_234.5  # 2025-11-28T12:00:34.5Z
MINUTE = datetime(2025, 11, 28, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


class Sink:
    """A store's ``save_health`` that keeps every write, and can fail."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, list[HealthCounts]]] = []
        self.fail = False

    def __call__(self, process: str, rows: list[HealthCounts]) -> None:
        if self.fail:
            raise ConnectionError("store down")
        self.writes.append((process, rows))


def counter(clock: Clock, sink: Sink) -> HealthCounter:
    return HealthCounter(sink, clock, 3600.0)


def test_a_poll_is_one_of_skip_fire_held_error_and_its_duration_is_kept() -> None:
    clock, sink = Clock(T0), Sink()
    health = counter(clock, sink)
    health.poll("orders", "skipped", "skip", T0 - 0.004, T0)
    health.poll("orders", "fired", "skip", T0 - 0.2, T0)
    health.poll("orders", "deduplicated", "skip", T0 - 0.001, T0)
    health.poll("orders", "buffered", "buffer_all", T0 - 0.001, T0, pending=True, dropped=2)
    health.poll("orders", "cancelling", "terminate_other", T0 - 0.001, T0, pending=True, cancelled=True)
    health.poll("orders", "error", "skip", T0 - 2.0, T0)
    assert health.flush() == 1
    [(process, [row])] = sink.writes
    assert process.split(":")[1] == str(os.getpid())
    assert row.minute == MINUTE
    assert (row.polls, row.skips, row.fires, row.errors) == (6, 1, 1, 1)
    assert row.held == {"skip": 1, "buffer_one": 0, "buffer_all": 1, "cancel_other": 0, "terminate_other": 1}
    assert (row.pending, row.cancelled, row.dropped) == (2, 1, 2)
    assert row.poll_seconds.count == 6
    assert row.poll_seconds.largest == pytest.approx(2.0)
    assert row.poll_seconds.p50 == 0.001  # the upper bound of the bucket holding the median
    assert row.last_poll_at == datetime.fromtimestamp(T0, tz=timezone.utc)


def test_nothing_counted_is_nothing_written() -> None:
    sink = Sink()
    health = counter(Clock(T0), sink)
    assert health.flush() == 0
    health.count("orders", late=1)
    assert health.flush() == 1
    assert health.flush() == 0  # unchanged since
    assert len(sink.writes) == 1


def test_each_flush_writes_the_minutes_totals_and_a_past_minute_is_forgotten_a_minute_later() -> None:
    clock, sink = Clock(T0), Sink()
    health = counter(clock, sink)
    health.poll("orders", "skipped", "skip", T0, T0)
    health.flush()
    health.poll("orders", "skipped", "skip", T0 + 1, T0 + 1)
    health.flush()
    assert [rows[0].skips for _, rows in sink.writes] == [1, 2]  # totals: a write replaces the last
    clock.at = T0 + 60
    health.poll("orders", "skipped", "skip", T0 + 60, T0 + 60)
    health.flush()
    assert [(row.minute, row.skips) for row in sink.writes[-1][1]] == [(MINUTE + timedelta(minutes=1), 1)]
    assert [row.minute for row in health.snapshot()] == [MINUTE, MINUTE + timedelta(minutes=1)]
    clock.at = T0 + 120
    health.poll("orders", "skipped", "skip", T0 + 120, T0 + 120)
    health.flush()
    assert [row.minute for row in health.snapshot()] == [MINUTE + timedelta(minutes=1),
                                                         MINUTE + timedelta(minutes=2)]


def names_in(shard: int, count: int) -> list[str]:
    return [name for name in (f"t{i}" for i in range(1000)) if health_shard(name) == shard][:count]


def test_a_flush_writes_each_changed_group_whole_and_no_other() -> None:
    clock, sink = Clock(T0), Sink()
    health = counter(clock, sink)
    one, two = names_in(3, 2)
    [other] = names_in(5, 1)
    for name in (one, two, other):
        health.poll(name, "skipped", "skip", T0, T0)
    assert health.flush() == 3
    health.poll(one, "fired", "skip", T0 + 1, T0 + 1)
    assert health.flush() == 2  # the group of `one`: `two` too, unchanged, so that the row keeps it
    assert sorted((row.trigger_name, row.polls) for row in sink.writes[-1][1]) == sorted([(one, 2), (two, 1)])


def test_a_late_count_for_the_minute_before_rewrites_its_group_with_every_trigger() -> None:
    clock, sink = Clock(T0), Sink()
    health = counter(clock, sink)
    one, two = names_in(7, 2)
    health.poll(one, "skipped", "skip", T0, T0)
    health.poll(two, "skipped", "skip", T0, T0)
    health.flush()
    clock.at = T0 + 60
    health.latency(one, T0 - 1, T0 + 1)  # its first step started in the minute before
    health.flush()
    assert sorted((row.trigger_name, row.minute, row.polls, row.latency_seconds.count)
                  for row in sink.writes[-1][1]) == sorted([(one, MINUTE, 1, 1), (two, MINUTE, 1, 0)])


def test_health_shards_are_stable_and_spread() -> None:
    assert health_shard("orders") == health_shard("orders")
    assert 0 <= health_shard("café ☕") < HEALTH_SHARDS
    assert len({health_shard(f"t{i}") for i in range(200)}) == HEALTH_SHARDS


def test_a_failed_write_is_made_again_at_the_next_flush() -> None:
    clock, sink = Clock(T0), Sink()
    health = counter(clock, sink)
    health.poll("orders", "skipped", "skip", T0, T0)
    sink.fail = True
    with pytest.raises(ConnectionError):
        health.flush()
    sink.fail = False
    clock.at = T0 + 90  # the minute has passed meanwhile: still written
    assert health.flush() == 1
    assert sink.writes[0][1][0].skips == 1
    assert health.snapshot() == []


def test_the_thread_flushes_every_interval_and_stop_writes_the_rest() -> None:
    written = threading.Event()
    sink = Sink()

    def write(process: str, rows: list[HealthCounts]) -> None:
        sink(process, rows)
        written.set()

    health = HealthCounter(write, Clock(T0), 0.05)
    health.poll("orders", "skipped", "skip", T0, T0)
    assert written.wait(10), "the flusher thread wrote nothing"
    health.poll("orders", "fired", "skip", T0, T0)
    health.stop()
    assert sink.writes[-1][1][0].polls == 2


def test_latency_counts_in_the_minute_of_the_step_start() -> None:
    sink = Sink()
    health = counter(Clock(T0), sink)
    health.latency("orders", T0 - 0.03, T0 + 40)  # fired in one minute, started in the next
    health.flush()
    [row] = sink.writes[0][1]
    assert row.minute == MINUTE + timedelta(minutes=1)
    assert row.latency_seconds.largest == pytest.approx(40.03)


def test_merge_sums_rows_of_a_minute_and_keeps_exact_maxima() -> None:
    one, two = HealthCounts("orders", MINUTE), HealthCounts("orders", MINUTE)
    one.skips, two.skips = 3, 4
    for seconds in (0.001, 0.001, 0.002):
        one.poll_seconds.observe(seconds)
    two.poll_seconds.observe(7.5)
    other = HealthCounts("orders", MINUTE + timedelta(minutes=1))
    [first, second] = merge([two, other, one])
    assert (first.minute, first.skips, first.poll_seconds.count) == (MINUTE, 7, 4)
    assert first.poll_seconds.largest == 7.5
    assert first.poll_seconds.total == pytest.approx(7.504)
    assert second.minute == MINUTE + timedelta(minutes=1)
    assert (one.skips, one.poll_seconds.count) == (3, 3)  # the rows merged are left as they were


def test_median_of_a_histogram_is_a_bucket_bound_never_above_the_maximum() -> None:
    assert median([0] * (len(BUCKETS) + 1), 0.0) is None
    durations = Durations()
    for seconds in (0.0004, 0.003, 0.003, 0.004, 9.0):
        durations.observe(seconds)
    assert durations.p50 == 0.005
    late = Durations()
    late.observe(400.0)
    assert late.p50 == 400.0  # past the last bucket: the maximum
    small = Durations()
    small.observe(0.03)
    assert small.p50 == 0.03  # the bucket bound (0.05) is more than the maximum


def test_minute_of_is_the_utc_minute() -> None:
    assert minute_of(T0) == MINUTE
    assert minute_of(T0 + 25.5) == MINUTE + timedelta(minutes=1)


def schedule(**values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "trigger_name": "orders", "poll_interval": 5.0, "enabled": True, "registered": True,
        "consecutive_errors": 0, "last_error": None, "last_error_at": None, "last_poll_at": None,
        "created_at": MINUTE, "updated_at": MINUTE,
    }
    row.update(values)
    return row


def test_a_trigger_not_polled_for_three_intervals_is_unhealthy() -> None:
    now = MINUTE + timedelta(seconds=30)
    polled = MINUTE + timedelta(seconds=10)
    assert assess_schedule(schedule(), last_polled_at=polled, now=now, slack=6.0).status == "ok"  # 20s <= 21s
    stale = assess_schedule(schedule(), last_polled_at=polled, now=now + timedelta(seconds=2), slack=6.0)
    assert stale.status == "unhealthy"
    assert "not polled for 22s" in stale.reason and "3 intervals of 5s" in stale.reason
    never = assess_schedule(schedule(), now=now, slack=6.0)
    assert never.status == "unhealthy" and "never polled" in never.reason
    stamped = schedule(last_poll_at=now - timedelta(seconds=1))  # a manual poll stamps the row
    assert assess_schedule(stamped, last_polled_at=polled, now=now, slack=0.0).status == "ok"
    assert assess_schedule(schedule(enabled=False), now=now, slack=0.0).status == "ok"
    assert assess_schedule(schedule(registered=False), now=now, slack=0.0).status == "ok"


def test_three_failed_polls_are_unhealthy_whether_or_not_it_was_polled_lately() -> None:
    now = MINUTE + timedelta(seconds=30)
    failing = schedule(consecutive_errors=3, last_error="boom")
    assert assess_schedule(failing).status == "unhealthy"
    health = assess_schedule(failing, last_polled_at=now, now=now)
    assert health.status == "unhealthy" and "last 3 polls failed" in health.reason
    assert assess_schedule(schedule(consecutive_errors=1), last_polled_at=now, now=now).status == "warning"


def test_counts_without_a_thread_wait_for_one_or_for_stop() -> None:
    sink = Sink()
    health = HealthCounter(sink, Clock(T0), 0.01)
    health.count("orders", late=1, thread=False)  # a prefork worker's main process
    threading.Event().wait(0.2)
    assert sink.writes == []  # nothing flushed it meanwhile
    health.stop()
    assert [(rows[0].late, rows[0].polls) for _, rows in sink.writes] == [(1, 0)]


class RowsStore:
    """The part of a store ``HealthTotals`` reads: merged rows from a minute on."""

    def __init__(self) -> None:
        self.rows: list[HealthCounts] = []

    def health(self, trigger_name: str | None, since: datetime) -> list[HealthCounts]:
        return merge(row for row in self.rows if row.minute >= since)


def test_prometheus_totals_count_from_the_servers_start_and_never_go_back() -> None:
    # The extra cloaca-celery[prometheus]: make test has it; the version matrix installs the core only.
    pytest.importorskip("prometheus_client")
    from cloaca_celery.metrics import WINDOW, HealthTotals

    store = RowsStore()
    before = HealthCounts("orders", MINUTE - timedelta(minutes=1), skips=5)  # before the server started
    store.rows.append(before)
    totals = HealthTotals(store, T0)  # type: ignore[arg-type]
    assert totals.read(T0) == {}
    first = HealthCounts("orders", MINUTE, skips=2)
    store.rows.append(first)
    assert totals.read(T0 + 1)["orders"].skips == 2
    first.skips = 3  # the process's next flush of the same minute replaces its row
    store.rows.append(HealthCounts("orders", MINUTE, skips=1))  # another process's row
    assert totals.read(T0 + 2)["orders"].skips == 4
    later = T0 + WINDOW + 120  # the first minute is no longer read, and still counted
    store.rows.append(HealthCounts("orders", minute_of(later), skips=7))
    assert totals.read(later)["orders"].skips == 11
    store.rows.clear()  # pruned from the store
    assert totals.read(later + 1)["orders"].skips == 11


def test_stop_gives_up_on_a_store_that_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    answer = threading.Event()

    def hangs(process: str, rows: list[HealthCounts]) -> None:
        answer.wait(30)

    health = HealthCounter(hangs, Clock(T0), 3600.0)
    health.count("orders", late=1)
    try:
        health.stop(timeout=0.1)  # returns: the ending process does not hang
        assert not answer.is_set()
        assert "last counts of this process were not saved: no answer within 0.1s" in caplog.text
    finally:
        answer.set()
