"""The health counts of the ``Store`` contract: ``save_health``, ``health``, ``last_polls``, ``prune_health``.

Run on every backend of ``conftest.py`` (SQLite, PostgreSQL, MariaDB, the Django store).
Rows come from :class:`cloaca_celery.counters.HealthCounter` as a worker process makes them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cloaca_celery.counters import HealthCounter, HealthCounts
from cloaca_celery.store import Store

T0 = 1_764_331_234.5  # 2025-11-28T12:00:34.5Z
MINUTE = datetime(2025, 11, 28, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc


def counted(trigger: str, at: float, polls: int, skip_ms: float = 4.0) -> HealthCounts:
    """A process's row: ``polls`` skips of ``skip_ms`` each, and one fire, in the minute of ``at``."""
    rows: list[HealthCounts] = []
    counter = HealthCounter(lambda process, found: rows.extend(found), lambda: at, 3600.0)
    for _ in range(polls):
        counter.poll(trigger, "skipped", "skip", at - skip_ms / 1000, at)
    counter.poll(trigger, "fired", "skip", at - 0.02, at)
    counter.poll(trigger, "deduplicated", "buffer_one", at - 0.001, at, pending=True, dropped=1)
    counter.latency(trigger, at - 0.05, at)
    counter.count(trigger, at, late=2)
    counter.flush()
    counter.stop()
    assert len(rows) == 1
    return rows[0]


def test_rows_of_several_processes_are_summed_per_minute(store: Store) -> None:
    one, two = counted("orders", T0, 3), counted("orders", T0 + 5, 7, skip_ms=300.0)
    store.save_health("host-a:11:aaaa", [one])
    store.save_health("host-b:12:bbbb", [two])
    store.save_health("host-a:11:aaaa", [counted("reports", T0 + 70, 1)])
    found = store.health(None, MINUTE)
    assert [(row.trigger_name, row.minute) for row in found] == [
        ("orders", MINUTE), ("reports", MINUTE + timedelta(minutes=1)),
    ]
    orders = found[0]
    assert (orders.polls, orders.skips, orders.fires, orders.held_buffer_one) == (14, 10, 2, 2)
    assert (orders.pending, orders.dropped, orders.late, orders.errors) == (2, 2, 4, 0)
    assert orders.poll_seconds.count == 14
    assert orders.poll_seconds.largest == pytest.approx(0.3)
    assert orders.latency_seconds.count == 2
    assert orders.latency_seconds.largest == pytest.approx(0.05)
    assert orders.last_poll_at == datetime.fromtimestamp(T0 + 5, tz=UTC)
    assert orders.minute.tzinfo is not None


def test_saving_a_process_row_again_replaces_it(store: Store) -> None:
    store.save_health("host-a:11:aaaa", [counted("orders", T0, 3)])
    store.save_health("host-a:11:aaaa", [counted("orders", T0, 3)])
    store.save_health("host-a:11:aaaa", [counted("orders", T0, 5)])
    [orders] = store.health("orders", MINUTE)
    assert (orders.polls, orders.skips) == (7, 5)


def test_health_of_one_trigger_from_a_minute_on(store: Store) -> None:
    store.save_health("p:1:a", [counted("orders", T0, 1), counted("orders", T0 + 120, 2),
                                counted("reports", T0 + 120, 3)])
    found = store.health("orders", MINUTE + timedelta(minutes=1, seconds=30))
    assert [(row.trigger_name, row.minute, row.skips) for row in found] == [
        ("orders", MINUTE + timedelta(minutes=2), 2),
    ]
    assert store.health("missing", MINUTE) == []


def test_last_polls_is_the_latest_of_every_process(store: Store) -> None:
    store.save_health("p:1:a", [counted("orders", T0, 1), counted("orders", T0 + 130, 1)])
    store.save_health("p:2:b", [counted("orders", T0 + 131, 1), counted("reports", T0 + 10, 1)])
    assert store.last_polls() == {
        "orders": datetime.fromtimestamp(T0 + 131, tz=UTC),
        "reports": datetime.fromtimestamp(T0 + 10, tz=UTC),
    }


def test_prune_health_deletes_the_minutes_before(store: Store) -> None:
    store.save_health("p:1:a", [counted("orders", T0, 1), counted("orders", T0 + 60, 1),
                                counted("orders", T0 + 180, 1)])
    assert store.prune_health(MINUTE + timedelta(minutes=2)) == 2
    assert [row.minute for row in store.health(None, MINUTE)] == [MINUTE + timedelta(minutes=3)]


def test_awkward_names_round_trip(store: Store) -> None:
    names = ["Orders", "orders", "café ☕", "a" * 200]
    store.save_health("p:1:a", [counted(name, T0, 1) for name in names])
    assert sorted(row.trigger_name for row in store.health(None, MINUTE)) == sorted(names)
