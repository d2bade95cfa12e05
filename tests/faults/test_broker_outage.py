"""Issue #7, case 2: the broker goes away for 10 s while triggers fire (DESIGN §2.1-§2.3, §2.7).

The broker and result backend are a ``redis-server`` of this test alone,
stopped (SIGTERM, nothing saved) and started again empty on the same port;
the triggers and the step report to another Redis database, which stays up.
Whatever the outage did to executions in flight (a lost step message, a
result never stored, a publish refused), every execution row reaches a final
status, no claim is left behind, polling resumes by itself soon after the
broker is back, without a burst of the polls missed meanwhile, and no
process had to be restarted.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import FINAL_STATUSES
from tests.e2e.harness import CeleryProject, wait_until
from tests.faults.helpers import (
    STEPS_QUEUE,
    RedisServer,
    claim_rows,
    exited,
    faults_project,
    history,
    leaked_claims,
    pool_children,
    records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INTERVAL = 0.5
OUTAGE = 10.0
GRACE = 3.0


def test_broker_outage_leaks_no_claim_ends_every_execution_and_polling_resumes_without_a_burst(
    private_redis: RedisServer, redis_url: str, redis_client: Any, sqlite_url: str, sqlite_store: SqlStore,
    launch: Callable[..., CeleryProject],
) -> None:
    triggers = f"serial:repeat:{INTERVAL}s,counter:counter:{INTERVAL}s,tick:tick:{INTERVAL}s"
    project = faults_project(
        launch, broker_url=private_redis.url, note_url=redis_url, database_url=sqlite_url,
        triggers=triggers, claim_grace=f"{GRACE}s", sweep_interval="1s", poll_time_limit="2s",
    )
    poller = project.worker("-Q", "celery", concurrency=2, name="poller")
    stepper = project.worker("-Q", STEPS_QUEUE, concurrency=3, name="stepper")
    beat = project.beat()
    for proc in (poller, stepper):
        proc.wait_for_log("ready", timeout=30)
    pools = {proc.pid: pool_children(proc.pid) for proc in (poller, stepper)}
    redis_client.set("sleep:serial", 1.0)  # one execution at a time, about every 1 s
    redis_client.set("sleep:counter", 0.5)  # a new context every poll, several at once
    redis_client.set("go:serial", 1)
    redis_client.set("go:counter", 1)

    def succeeded(name: str, after: float = 0.0) -> int:
        return sum(r["status"] == "succeeded" and r["started_at"].timestamp() > after
                   for r in history(sqlite_store, name))

    wait_until(lambda: succeeded("serial") >= 2 and succeeded("counter") >= 3, 40,
               "both triggers firing and their workflows succeeding", project)

    # Stop the broker while a workflow runs (and usually a few more are queued or publishing).
    caught = wait_until(
        lambda: [r for r in history(sqlite_store, "serial") + history(sqlite_store, "counter")
                 if r["status"] == "running"],
        10, "a running workflow", project,
    )
    private_redis.stop()
    stopped_at = time.time()
    time.sleep(OUTAGE)
    private_redis.start()
    returned_at = time.time()

    def ticks(after: float) -> list[float]:
        return [p["t"] for p in records(redis_client, "polls:tick") if p["t"] > after]

    # A worker that died of the outage would never poll again: say so at once.
    wait_until(lambda: ticks(returned_at) or exited(project), 30, "polling to resume after the outage",
               project)
    assert exited(project) == [], "a process did not survive the broker outage"
    first_tick = ticks(returned_at)[0]
    resumed_after = first_tick - returned_at
    assert resumed_after <= 10.0, f"polling resumed {resumed_after:.1f}s after the broker returned"
    # The non-concurrent trigger fires its same context again: the claims of executions that the
    # outage cut short did not stay behind (a leaked claim would block it for cloaca_claim_ttl, 6 h).
    wait_until(lambda: succeeded("serial", returned_at) >= 2 and succeeded("counter", returned_at) >= 3,
               GRACE + 30, "both triggers to fire and succeed again", project)
    time.sleep(3.0)
    redis_client.delete("go:serial", "go:counter")

    def all_final() -> bool:
        rows = history(sqlite_store, "serial") + history(sqlite_store, "counter")
        return all(r["status"] in FINAL_STATUSES for r in rows)

    wait_until(all_final, GRACE + 30, "every execution row to reach a final status", project)
    rows = history(sqlite_store, "serial") + history(sqlite_store, "counter")
    caught_ids = {r["execution_id"] for r in caught}
    caught_end = {r["execution_id"]: r["status"] for r in rows if r["execution_id"] in caught_ids}
    assert len(caught_end) == len(caught_ids) and set(caught_end.values()) <= set(FINAL_STATUSES)
    assert leaked_claims(sqlite_store) == []
    assert claim_rows(sqlite_store) == [], "a claim outlived every execution"

    # No burst: the polls missed during the outage are not made up for afterwards.
    after = ticks(returned_at)
    gaps = [b - a for a, b in itertools.pairwise(after)]
    relative = [round(t - returned_at, 3) for t in after]
    assert min(gaps) >= INTERVAL / 2 - 0.05, f"two polls {min(gaps):.3f}s apart after the outage: {relative}"
    window = [t for t in after if t < first_tick + 5.0]
    assert len(window) <= 5.0 / INTERVAL + 2, f"{len(window)} polls in 5 s after the outage: {relative}"
    during = [t for t in ticks(stopped_at + 2 * INTERVAL) if t < returned_at]

    # Nothing had to be restarted.
    assert poller.running() and stepper.running() and beat.running()
    assert {proc.pid: pool_children(proc.pid) for proc in (poller, stepper)} == pools
    statuses = Counter(r["status"] for r in rows)
    print(f"\ncase 2: polling resumed {resumed_after:.1f}s after the broker returned "
          f"({len(during)} polls during the outage, {len(window)} in the 5 s after, "
          f"min gap {min(gaps):.2f}s); "
          f"{len(rows)}/{len(rows)} rows final {dict(statuses)} (running at the stop: "
          f"{sorted(caught_end.values())}); 0 claims left")


def test_a_worker_holding_a_poll_with_an_eta_survives_the_broker_going_away(
    private_redis: RedisServer, redis_url: str, redis_client: Any, sqlite_url: str,
    launch: Callable[..., CeleryProject],
) -> None:
    """The dispatcher publishes polls with their slot's ``eta`` (up to a tick ahead), so a worker
    that runs polls nearly always holds one, unacknowledged, waiting for its time: the moment the
    broker connection drops must not be fatal for it."""
    project = faults_project(
        launch, broker_url=private_redis.url, note_url=redis_url, database_url=sqlite_url,
        triggers="tick:tick:1h",
    )
    worker = project.worker("-Q", "celery", concurrency=1, name="poller")
    worker.wait_for_log("ready", timeout=30)
    client = Celery("faults-client", broker=private_redis.url, set_as_current=False)
    try:
        held = client.send_task("cloaca.poll", args=("tick",), countdown=60, expires=120)

        def scheduled() -> bool:
            replies = client.control.inspect(timeout=1.0).scheduled() or {}
            return any(entry["request"]["id"] == held.id for entries in replies.values() for entry in entries)

        wait_until(scheduled, 15, "the worker to hold the poll until its eta", project)
    finally:
        client.close()

    private_redis.stop()
    time.sleep(3.0)
    private_redis.start()
    wait_until(lambda: worker.log().count("Connected to redis://") >= 2 or exited(project), 20,
               "the worker to reconnect", project)
    assert exited(project) == [], "the worker did not survive the broker going away"

    # And it polls again: a manual poll after the outage runs.
    client = Celery("faults-client", broker=private_redis.url, set_as_current=False)
    try:
        client.send_task("cloaca.poll", args=("tick",), expires=30)
    finally:
        client.close()
    wait_until(lambda: redis_client.llen("polls:tick") >= 1, 15, "a poll after the outage", project)
