"""Deduplication with real processes (DESIGN §2.1, §2.3, §2.4).

A non-concurrent trigger that fires the same context on every poll never has
two executions of it at once, however many workers and beat processes run;
with ``allow_concurrent=True`` the executions overlap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cloaca_celery import DefaultRunner
from tests.e2e.harness import CeleryProject, app_env, history, max_overlap, records, wait_until
from tests.e2e.poll_reports import assert_one_poll_per_slot, wait_for_polls_to_end

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MODULE = "e2e_history"
ALL_QUEUES = "celery,e2e.steps"


# ``started_at`` is stamped when the poll decides to fire, a moment (building the canvas)
# before the claim is taken, so a fire that wins the claim the instant the previous execution
# released it may carry a ``started_at`` a few milliseconds older than that release.
FIRE_STAMP_SLACK = timedelta(milliseconds=50)


def _assert_serial_rows(rows: list[dict[str, Any]]) -> None:
    """Executions of one hash, oldest first: each starts after the previous one ended."""
    rows = sorted(rows, key=lambda r: r["started_at"])
    for before, after in itertools.pairwise(rows):
        assert before["completed_at"] is not None, before
        assert after["started_at"] >= before["completed_at"] - FIRE_STAMP_SLACK, (
            f"execution {after['execution_id']} was fired at {after['started_at']} while "
            f"{before['execution_id']} ran until {before['completed_at']}"
        )
        assert after["running_at"] >= before["completed_at"], (after, before)


def _assert_serial_steps(steps: list[dict[str, Any]]) -> None:
    spans = sorted((s["start"], s["end"]) for s in steps)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two steps of one context ran at once: {spans}"


def _active_watch(runner: DefaultRunner, name: str, seen: list[int]) -> Callable[[], int]:
    def active() -> int:
        count = sum(r["status"] in ("queued", "running") for r in history(runner, name))
        seen.append(count)
        return count
    return active


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_non_concurrent_trigger_never_runs_one_context_twice_at_once(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "dedup_serial"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", "celery", concurrency=2, name="poller")
    project.worker("-Q", "e2e.steps", concurrency=4, name="stepper")  # room for 4 steps at once
    project.beat()
    redis_client.set(f"sleep:{name}", 2)
    redis_client.set(f"go:{name}", 1)  # fire {"key": "same"} every 200 ms

    seen: list[int] = []
    active = _active_watch(runner, name, seen)
    wait_until(lambda: (active(), len(records(redis_client, f"steps:{name}")) >= 3)[1], 30,
               "three finished steps", project)
    redis_client.delete(f"go:{name}")
    wait_for_polls_to_end(redis_client, name, project)  # a poll that read go: may fire after the delete
    wait_until(lambda: active() == 0, 15, "the last execution to end", project)

    assert max(seen) == 1, "two executions of one context were active at once"
    rows = history(runner, name)
    assert len(rows) >= 3 and {r["status"] for r in rows} == {"succeeded"}, rows
    assert len({r["context_hash"] for r in rows}) == 1
    _assert_serial_rows(rows)
    steps = records(redis_client, f"steps:{name}")
    assert len(steps) == len(rows)
    _assert_serial_steps(steps)
    schedule = runner.get_trigger_schedule(name)
    # About ten polls per 2 s execution found the claim taken.
    assert schedule["dedup_count"] >= 4 * (len(rows) - 1), schedule


def test_concurrent_trigger_runs_the_same_context_several_times_at_once(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "dedup_parallel"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", "celery", concurrency=2, name="poller")
    project.worker("-Q", "e2e.steps", concurrency=6, name="stepper")
    project.beat()
    redis_client.set(f"sleep:{name}", 2)
    redis_client.set(f"go:{name}", 1)

    wait_until(lambda: len(records(redis_client, f"steps:{name}")) >= 6, 30, "six finished steps", project)
    redis_client.delete(f"go:{name}")
    wait_for_polls_to_end(redis_client, name, project)
    wait_until(lambda: all(r["status"] == "succeeded" for r in history(runner, name)), 15,
               "every execution to end", project)
    rows = history(runner, name)
    assert len({r["context_hash"] for r in rows}) == 1
    steps = records(redis_client, f"steps:{name}")
    assert max_overlap([(s["start"], s["end"]) for s in steps]) >= 3, steps
    row_spans = [(r["started_at"].timestamp(), r["completed_at"].timestamp()) for r in rows]
    assert max_overlap(row_spans) >= 3
    assert runner.get_trigger_schedule(name)["dedup_count"] == 0


def test_two_beats_and_two_workers_neither_double_polls_nor_overlap_executions(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "dedup_multi"
    interval = 0.5
    project = launch(MODULE, **app_env(redis_url, store_url, name, E2E_DISPATCH_INTERVAL="100ms"))
    workers = [project.worker("-Q", ALL_QUEUES, concurrency=4, name=f"w{i}") for i in (1, 2)]
    # DEBUG, so each beat's log shows the dispatch ticks it sent.
    beats = [project.beat("-l", "debug", name=f"beat{i}") for i in (1, 2)]
    for worker in workers:
        worker.wait_for_log("ready", timeout=30)
    redis_client.set(f"sleep:{name}", 1.5)
    redis_client.set(f"go:{name}", 1)

    def polls() -> list[dict[str, Any]]:
        return records(redis_client, f"polls:{name}")

    wait_until(lambda: len(polls()) >= 4, 30, "polling to start", project)
    start = polls()[2]["t"]  # the first polls pay for the pools' start-up
    seen: list[int] = []
    active = _active_watch(runner, name, seen)
    wait_until(lambda: (active(), polls()[-1]["t"] - start >= 15.0)[1], 30, "15 s of polling", project)
    redis_client.delete(f"go:{name}")
    wait_for_polls_to_end(redis_client, name, project)  # a poll that read go: may fire after the delete
    wait_until(lambda: active() == 0, 15, "the last execution to end", project)

    window = [p for p in polls() if p["t"] >= start]
    assert_one_poll_per_slot(polls(), interval)  # two beats, yet each slot polled once
    times = [p["t"] for p in window]
    span = times[-1] - times[0]
    expected = span / interval + 1
    # At most one poll per slot is exact (above); under load a poll may be dropped as late,
    # so the lower bound only catches polls lost wholesale.
    assert 0.5 * expected <= len(times) <= 1.2 * expected, f"{len(times)} polls in {span:.1f}s"
    # Both workers polled and both beats dispatched, so the single cadence is not luck.
    pids = {w.pid for w in workers}
    assert {p["ppid"] for p in window} == pids, "the polls did not spread over both workers"
    for beat in beats:
        assert "Sending due task cloaca.dispatch" in beat.log(), beat.log()[-2000:]

    assert max(seen) == 1, "two executions of one context were active at once"
    rows = history(runner, name)
    assert len(rows) >= 4 and {r["status"] for r in rows} == {"succeeded"}, rows
    _assert_serial_rows(rows)
    steps = records(redis_client, f"steps:{name}")
    assert len(steps) == len(rows)
    _assert_serial_steps(steps)
    starts = {s["execution_id"]: s for s in records(redis_client, f"started:{name}")}
    assert {s["ppid"] for s in starts.values()} <= pids
    assert runner.get_trigger_schedule(name)["dedup_count"] >= len(rows)
