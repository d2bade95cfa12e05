"""The store's clock as a process reads it, and the heartbeat that renews running steps' leases."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

import pytest

from cloaca_celery.clock import SAMPLES, StoreClock
from cloaca_celery.leases import LeaseKeeper


def test_the_clock_reads_the_stores_time_through_a_measured_offset() -> None:
    calls: list[float] = []

    def store_now() -> float:
        calls.append(time.time())
        return time.time() + 5.0  # the database's clock runs 5 s ahead of this host's

    clock = StoreClock(store_now, remeasure_every=300)
    assert abs(clock.now() - (time.time() + 5.0)) < 0.05
    for _ in range(100):
        clock.now()
    assert len(calls) == SAMPLES, "the offset is measured once (its best of SAMPLES readings), not per read"
    assert clock.offset == pytest.approx(5.0, abs=0.05)


def test_the_clock_keeps_the_reading_of_the_shortest_round_trip() -> None:
    """The first reading may open the connection: a slow round trip, whose middle is not the store's."""
    delays = [0.3, 0.0, 0.0]

    def store_now() -> float:
        delay = delays.pop(0) if delays else 0.0
        time.sleep(delay)  # connecting, before the store reads its clock
        return time.time() + 5.0

    clock = StoreClock(store_now, remeasure_every=300)
    assert clock.offset == pytest.approx(5.0, abs=0.02)


def test_an_unreachable_store_keeps_the_last_offset_and_tries_again() -> None:
    answers = [lambda: time.time() - 2.0]

    def store_now() -> float:
        return answers[0]()

    clock = StoreClock(store_now, remeasure_every=0.0)
    assert clock.offset == pytest.approx(-2.0, abs=0.05)

    def down() -> float:
        raise OSError("connection refused")

    answers[0] = down
    assert clock.now() == pytest.approx(time.time() - 2.0, abs=0.05)


def test_start_up_warns_when_this_hosts_clock_is_more_than_a_second_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloaca_celery.clock"):
        StoreClock(lambda: time.time() + 0.3).check("worker")
        StoreClock(lambda: time.time() - 5.0).check("beat")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "beat's clock is 5.0s ahead of the store's" in messages[0], messages


def test_one_renewal_statement_renews_every_execution_running_here() -> None:
    renewed: list[tuple[list[str], float]] = []

    def renew(ids: Collection[str], until: float) -> set[str]:
        renewed.append((sorted(ids), until))
        return set()

    keeper = LeaseKeeper(renew, time.time, interval=3600.0, misses=3)
    assert keeper.ttl == 3 * 3600.0
    keeper.hold("a")
    keeper.hold("a")  # two steps of one execution
    keeper.hold("b")
    keeper.renew_now()
    keeper.release("a")
    keeper.renew_now()
    keeper.release("a")
    keeper.release("b")
    keeper.renew_now()  # nothing runs: no statement
    assert [ids for ids, _ in renewed] == [["a", "b"], ["a", "b"]]
    assert all(until > time.time() + 3 * 3600 - 5 for _, until in renewed)


def test_an_execution_ended_while_its_step_runs_here_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper = LeaseKeeper(lambda ids, until: {"gone"}, time.time, interval=3600.0, misses=2)
    keeper.hold("gone")
    with caplog.at_level(logging.ERROR, logger="cloaca_celery.leases"):
        keeper.renew_now()
        keeper.renew_now()
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "execution gone ended while a step of it still runs" in errors[0]


def test_the_heartbeat_thread_renews_while_a_step_blocks_the_main_thread() -> None:
    renewed: list[float] = []
    keeper = LeaseKeeper(lambda ids, until: (renewed.append(until), set())[1], time.time,
                         interval=0.05, misses=3)
    keeper.hold("busy")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # a step computing, without sleeping
        sum(range(1000))
    keeper.release("busy")
    assert len(renewed) >= 3, renewed
