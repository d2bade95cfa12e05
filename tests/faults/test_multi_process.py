"""Issue #7, case 4: two beats and four worker processes for a minute (DESIGN §2.1, §2.3, §2.4).

Two ``celery beat`` and two ``celery worker -c 2`` run one non-concurrent
trigger that fires the same context on every poll (a 2 s workflow) and one
``allow_concurrent=True`` trigger that does the same. The non-concurrent
trigger never has two executions of its context at once (execution rows and
the step's own start/end records agree); every fire of the concurrent
trigger runs, to success, exactly once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import ACTIVE_STATUSES, FINAL_STATUSES
from tests.e2e.harness import CeleryProject, max_overlap, records, wait_until
from tests.e2e.poll_reports import assert_one_poll_per_slot, wait_for_polls_to_end
from tests.faults.helpers import ALL_QUEUES, faults_project, history, leaked_claims

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

RUN = 60.0
SERIAL_INTERVAL = 0.5
PARALLEL_INTERVAL = 1.0
STEP = 2.0
# started_at is stamped when the poll decides to fire, a moment before it takes the claim.
FIRE_STAMP_SLACK = timedelta(milliseconds=50)


def test_two_beats_four_worker_processes_for_a_minute_serial_stays_serial_and_concurrent_runs_every_fire(
    redis_url: str, redis_client: Any, store_url: str, sqlite_store: SqlStore,
    launch: Callable[..., CeleryProject],
) -> None:
    project = faults_project(
        launch, broker_url=redis_url, database_url=store_url,
        triggers=f"serial:repeat:{SERIAL_INTERVAL}s,parallel:repeat_concurrent:{PARALLEL_INTERVAL}s",
        sweep_interval="2s", poll_time_limit="5s",
    )
    workers = [project.worker("-Q", ALL_QUEUES, concurrency=2, name=f"w{i}") for i in (1, 2)]
    beats = [project.beat("-l", "debug", name=f"beat{i}") for i in (1, 2)]
    for worker in workers:
        worker.wait_for_log("ready", timeout=30)
    redis_client.set("sleep:serial", STEP)
    redis_client.set("sleep:parallel", STEP)
    redis_client.set("go:serial", 1)
    redis_client.set("go:parallel", 1)

    # Watch the rows while it runs: never two active executions of the serial context.
    started = time.time()
    active_seen: list[int] = []
    while time.time() - started < RUN:
        active_seen.append(sum(r["status"] in ACTIVE_STATUSES for r in history(sqlite_store, "serial")))
        time.sleep(0.2)
    redis_client.delete("go:serial", "go:parallel")
    stopped = time.time()
    for name in ("serial", "parallel"):  # a poll that read go: may fire after the delete
        wait_for_polls_to_end(redis_client, name, project)

    def settled() -> bool:
        rows = history(sqlite_store, "serial") + history(sqlite_store, "parallel")
        return all(r["status"] in FINAL_STATUSES for r in rows)

    wait_until(settled, 30, "every execution to end", project)
    assert all(w.running() for w in workers) and all(b.running() for b in beats)

    # -- the non-concurrent trigger ----------------------------------------------------
    serial = history(sqlite_store, "serial")
    assert max(active_seen) == 1, "two executions of one context were active at once"
    assert len({r["context_hash"] for r in serial}) == 1
    assert [r for r in serial if r["status"] != "succeeded"] == []
    # Idle, about 23 executions of 2 s follow one another in the minute; a busy machine makes
    # the gaps longer. A claim left behind would allow one (claim_grace is 60 s).
    expected = RUN / STEP
    assert 0.4 * expected <= len(serial) <= expected + 1, f"{len(serial)} serial executions in {RUN:g}s"
    for before, after in itertools.pairwise(serial):
        assert after["started_at"] >= before["completed_at"] - FIRE_STAMP_SLACK, (before, after)
        assert after["running_at"] >= before["completed_at"], (before, after)
    row_spans = [(r["started_at"].timestamp(), r["completed_at"].timestamp()) for r in serial]
    steps = sorted((s["start"], s["end"]) for s in records(redis_client, "steps:serial"))
    assert len(steps) == len(serial)
    for (_, end), (start, _) in itertools.pairwise(steps):
        assert start >= end, f"two steps of the serial context ran at once: {end} > {start}"
    assert max_overlap(steps) == 1
    serial_schedule = sqlite_store.get_schedule("serial")
    assert serial_schedule["dedup_count"] >= len(serial), serial_schedule

    # -- the concurrent trigger --------------------------------------------------------
    parallel = history(sqlite_store, "parallel")
    failed = [r for r in parallel if r["status"] != "succeeded"]
    assert failed == [], failed
    ran = [s["execution_id"] for s in records(redis_client, "steps:parallel")]
    assert sorted(ran) == sorted(r["execution_id"] for r in parallel), "a fire did not run, or ran twice"
    # About one fire per interval (58 idle); under load a poll may expire unrun.
    assert len(parallel) >= 0.4 * RUN / PARALLEL_INTERVAL, f"{len(parallel)} concurrent fires in {RUN:g}s"
    parallel_steps = [(s["start"], s["end"]) for s in records(redis_client, "steps:parallel")]
    assert max_overlap(parallel_steps) >= 2, "the concurrent trigger's executions never overlapped"
    assert sqlite_store.get_schedule("parallel")["dedup_count"] == 0

    # -- one poll per interval across two beats and four processes -------------------
    assert_one_poll_per_slot(records(redis_client, "polls:serial"), SERIAL_INTERVAL)
    polls = sorted(p["t"] for p in records(redis_client, "polls:serial") if started + 2 < p["t"] < stopped)
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    span = polls[-1] - polls[0]
    assert len(polls) <= 1.1 * (span / SERIAL_INTERVAL + 1), f"{len(polls)} polls in {span:.1f}s"
    for beat in beats:
        assert "Sending due task cloaca.dispatch" in beat.log()
    started_records = records(redis_client, "started:serial") + records(redis_client, "started:parallel")
    pids = {s["ppid"] for s in started_records}
    assert pids == {w.pid for w in workers}, "the steps did not spread over both workers"
    assert leaked_claims(sqlite_store) == []
    print(f"\ncase 4: {RUN:g}s, 2 beats, 2x2 worker processes: {len(serial)} serial executions, never two "
          f"at once (max active {max(active_seen)}, max step overlap {max_overlap(steps)}, row overlap "
          f"{max_overlap(row_spans)}), {serial_schedule['dedup_count']} dedups; {len(parallel)} concurrent "
          f"fires, {len(ran)} steps run, all succeeded, up to {max_overlap(parallel_steps)} at once; "
          f"{len(polls)} serial polls in {span:.1f}s (min gap {min(gaps):.2f}s)")
