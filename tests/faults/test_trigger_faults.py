"""Issue #7, case 5: trigger functions that misbehave (DESIGN §2.1, §2.5, §2.7).

A trigger that raises, returns the wrong type, fires a context JSON cannot
hold or one over ``cloaca_max_context_bytes``, or hangs past the poll time
limit: every such poll is counted on the schedule (``consecutive_errors``,
``last_error``), nothing is enqueued (no execution row, no step runs) and the
trigger is polled again at its next interval. A trigger slower than its
interval (but within the time limit) is no error: its polls never overlap.
Once each trigger behaves again it fires, and its error count is back to 0.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from cloaca_celery.sqlstore import SqlStore
from tests.e2e.harness import CeleryProject, records, wait_until
from tests.faults.helpers import (
    ALL_QUEUES,
    STEPS_QUEUE,
    faults_project,
    history,
    log_lines,
    pool_children,
    schedule,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INTERVAL = 0.4
TIME_LIMIT = 1.5
SLOW = 1.0  # seconds a poll of the slow trigger takes: more than its interval, less than the limit

FAULTY = {
    # trigger: what its last_error says
    "raises": ["RuntimeError: boom from the raises trigger"],
    "wrong_type": ["TypeError: trigger 'wrong_type' returned dict"],
    "unserializable": ["ContextError", "'when'", "datetime", "cannot be stored as JSON"],
    "oversized": ["fire failed: ContextError", "over the limit of 1024", "cloaca_max_context_bytes"],
    "hangs": [f"timed out after {TIME_LIMIT:g}s"],
}
ALL = [*FAULTY, "slow"]


def _errors_and_polls(client: Any, store: SqlStore, name: str) -> tuple[int, int, int]:
    """The schedule's error count between two counts of finished polls (at most one poll is in flight)."""
    before = client.llen(f"polled:{name}")
    row = schedule(store, name)
    after = client.llen(f"polled:{name}")
    return before, row["consecutive_errors"] if row else 0, after


def test_misbehaving_triggers_are_recorded_enqueue_nothing_and_are_polled_on(
    redis_url: str, redis_client: Any, store_url: str, sqlite_store: SqlStore,
    launch: Callable[..., CeleryProject],
) -> None:
    triggers = ",".join(f"{name}:{name}:{INTERVAL}s" for name in ALL)
    project = faults_project(
        launch, broker_url=redis_url, database_url=store_url, triggers=triggers,
        poll_time_limit=f"{TIME_LIMIT}s", max_context_bytes="1024",
    )
    redis_client.set("slow:slow", SLOW)
    worker = project.worker("-Q", ALL_QUEUES, concurrency=4)
    beat = project.beat()
    worker.wait_for_log("ready", timeout=30)
    pool = wait_until(lambda: len(pool_children(worker.pid)) == 4 and pool_children(worker.pid), 10,
                      "the worker's four pool processes", project)

    def erred(name: str, count: int) -> bool:
        row = schedule(sqlite_store, name)
        return bool(row and row["consecutive_errors"] >= count)

    for name in FAULTY:
        wait_until(lambda name=name: erred(name, 2 if name == "hangs" else 4), 40,
                   f"repeated failed polls of {name!r}", project)
    wait_until(lambda: redis_client.llen("polled:slow") >= 4, 20, "four slow polls", project)

    # -- while they misbehave -------------------------------------------------------
    bad = {}
    for name, expected in FAULTY.items():
        before, errors, after = _errors_and_polls(redis_client, sqlite_store, name)
        row = schedule(sqlite_store, name)
        assert row is not None
        bad[name] = errors
        # Every finished poll was counted as an error (one more may be saving right now).
        assert before - 1 <= errors <= after, (name, before, errors, after)
        for text in expected:
            assert text in (row["last_error"] or ""), (name, row["last_error"])
        assert row["last_error_at"] is not None and row["last_fire_at"] is None, row
    slow = schedule(sqlite_store, "slow")
    assert slow is not None and slow["consecutive_errors"] == 0 and slow["last_error"] is None, slow
    for name in ALL:
        assert history(sqlite_store, name) == [], f"{name} wrote an execution row"
        assert redis_client.llen(f"started:{name}") == 0, f"a step of {name} ran"
    assert redis_client.llen(STEPS_QUEUE) == 0, "a step message was published"

    log = worker.log()
    for name in FAULTY:
        if name == "hangs":
            lines = log_lines(log, "hangs: poll timed out after")
        else:
            lines = log_lines(log, f"{name}: poll failed")
        # One line per failed poll, whatever its kind.
        assert len(lines) >= bad[name] - 1, (name, bad[name], lines)
    # A traceback for the first failure of each trigger, not one per poll.
    tracebacks = log.count("Traceback (most recent call last)")
    failures = sum(bad.values())
    logged = [line for line in log.splitlines() if "poll failed: " in line and "in a row" not in line]
    assert tracebacks <= len(FAULTY), (
        f"{tracebacks} tracebacks for {failures} failed polls; first failures:\n" + "\n".join(logged))

    # A poll slower than its interval never overlaps the next one, and is no error.
    spans = sorted((p["start"], p["end"]) for p in records(redis_client, "polled:slow"))
    assert all(end - start >= SLOW - 0.05 for start, end in spans), spans
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two polls of 'slow' overlap: {spans}"
    # ...and the next poll comes at the first dispatch tick after it ended, not a slot later.
    starts = [start for start, _ in spans]
    slow_gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(slow_gaps) <= SLOW + 2 * INTERVAL, slow_gaps
    assert "outlived its lease" not in log

    # Polling goes on: each trigger keeps being polled after its errors.
    counts = {name: redis_client.llen(f"polls:{name}") for name in ALL}
    for name in ALL:
        wait_until(lambda name=name: redis_client.llen(f"polls:{name}") >= counts[name] + 2, 15,
                   f"two more polls of {name!r}", project)

    # -- they behave again ---------------------------------------------------------
    recovered_at = time.time()
    for name in ALL:
        redis_client.set(f"good:{name}", 1)

    def fired_once(name: str) -> dict[str, Any] | None:
        rows = history(sqlite_store, name)
        return rows[0] if len(rows) == 1 and rows[0]["status"] == "succeeded" else None

    for name in ALL:
        row = wait_until(lambda name=name: fired_once(name), 20, f"{name!r} to fire after it recovered",
                         project)
        assert row["context"] == {"recovered": name}, row
        assert [s["execution_id"] for s in records(redis_client, f"started:{name}")] == [row["execution_id"]]
        healed = wait_until(
            lambda name=name: (s := schedule(sqlite_store, name)) and s["consecutive_errors"] == 0 and s,
            10, f"{name!r}'s error count to reset", project,
        )
        assert healed["last_fire_at"] is not None
    time.sleep(2 * INTERVAL + SLOW)
    for name in ALL:
        assert len(history(sqlite_store, name)) == 1, f"{name} fired more than once"
        assert schedule(sqlite_store, name)["consecutive_errors"] == 0  # type: ignore[index]
    assert worker.running() and beat.running()
    assert pool_children(worker.pid) == pool, "a pool process was replaced (killed by a hard time limit?)"
    summary = ", ".join(f"{name} {bad[name]}" for name in FAULTY)
    print(f"\ncase 5: consecutive errors before recovery: {summary}; slow 0 errors, "
          f"{len(spans)} polls of {SLOW}s at a {INTERVAL}s interval, none overlapping, "
          f"{min(slow_gaps):.2f}-{max(slow_gaps):.2f}s apart; "
          f"{tracebacks} tracebacks for {failures} failed polls; every trigger fired once "
          f"within {time.time() - recovered_at:.1f}s of recovering")
