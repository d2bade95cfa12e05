"""Issue #7, case 1: a worker SIGKILLed in the middle of a workflow (DESIGN §2.2, §2.3).

The killed step never reports its end, and its heartbeat stops. Once its
lease (``cloaca_heartbeat_interval`` x ``cloaca_heartbeat_misses``) has run
out, the sweep (every ``cloaca_sweep_interval``) ends the execution as
``lost`` and frees its claim; the non-concurrent trigger, which has been
firing the same context all along (deduplicated), fires again at its next
poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import FINAL_STATUSES
from tests.e2e.harness import CeleryProject, records, wait_until
from tests.faults.helpers import (
    STEPS_QUEUE,
    claim_rows,
    faults_project,
    history,
    leaked_claims,
    log_lines,
    log_time,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HEARTBEAT = 1.0
LEASE = 2.0  # two missed heartbeats
SWEEP = 0.5
INTERVAL = 0.5
LOAD_SLACK = 3.0  # what a busy machine may add to a delay measured here


def test_killed_worker_execution_ends_lost_claim_is_freed_and_the_trigger_fires_again(
    redis_url: str, redis_client: Any, store_url: str, sqlite_store: SqlStore,
    launch: Callable[..., CeleryProject],
) -> None:
    name = "recover"
    project = faults_project(
        launch, broker_url=redis_url, database_url=store_url, triggers=f"{name}:repeat:{INTERVAL}s",
        heartbeat_interval=f"{HEARTBEAT}s", heartbeat_misses=str(int(LEASE / HEARTBEAT)),
        sweep_interval=f"{SWEEP}s", poll_time_limit="2s",
    )
    # Polls, dispatch and sweep on one worker, steps on two others: the kill hits only a step.
    poller = project.worker("-Q", "celery", concurrency=2, name="poller")
    steppers = {p.pid: p for p in (project.worker("-Q", STEPS_QUEUE, concurrency=1, name=f"step{i}")
                                   for i in (1, 2))}
    project.beat()
    for proc in [poller, *steppers.values()]:
        proc.wait_for_log("ready", timeout=30)
    redis_client.set(f"sleep_once:{name}", 60)  # the first run hangs in its step; later runs are quick
    redis_client.set(f"go:{name}", 1)  # fire {"key": "same"} on every poll

    first = wait_until(lambda: records(redis_client, f"started:{name}"), 30, "the first step to start",
                       project)[0]
    victim = steppers[first["ppid"]]
    survivor = next(p for pid, p in steppers.items() if pid != first["ppid"])
    row = next(r for r in history(sqlite_store, name) if r["execution_id"] == first["execution_id"])
    assert row["status"] == "running", row
    assert [c["execution_id"] for c in claim_rows(sqlite_store)] == [first["execution_id"]]
    time.sleep(1.0)  # a few polls find the claim taken
    victim.kill()
    killed_at = time.time()
    assert not victim.running()

    def ended() -> dict[str, Any] | None:
        row = sqlite_store.get_execution(first["execution_id"])
        return row if row["status"] in FINAL_STATUSES else None

    lost = wait_until(ended, LEASE + 20, "the sweep to end the killed worker's execution", project)
    assert lost["status"] in ("lost", "failed"), lost
    assert first["hostname"] in (lost["error"] or ""), lost  # "...running on worker <name> and its lease..."
    # The claim went with the execution (it may already be held by the next execution).
    assert first["execution_id"] not in {c["execution_id"] for c in claim_rows(sqlite_store)}
    dedup_before_release = sqlite_store.get_schedule(name)["dedup_count"]
    assert dedup_before_release >= 2, "the claim did not block the polls while the step ran"

    again = wait_until(
        lambda: next((r for r in history(sqlite_store, name)
                      if r["execution_id"] != first["execution_id"] and r["status"] == "succeeded"), None),
        20, "the same context to fire again and succeed", project,
    )
    redis_client.delete(f"go:{name}")

    verdict = log_lines(poller.log(), f"execution {first['execution_id']} of workflow 'fault_job' marked")
    assert len(verdict) == 1, verdict
    ended_at = log_time(verdict[0])
    refired_at = again["started_at"].timestamp()
    # The last heartbeat came at most HEARTBEAT before the kill, so the lease ran out at most
    # LEASE after it; the first sweep after that ends it, and the next poll fires again.
    sweep_delay = ended_at - killed_at
    refire_delay = refired_at - ended_at
    print(f"\ncase 1: killed {killed_at - lost['started_at'].timestamp():.2f}s after the fire; ended "
          f"{lost['status']} {sweep_delay:.2f}s after the kill (lease {LEASE:g}s, sweep every {SWEEP:g}s); "
          f"fired again {refire_delay:.2f}s after that, {refired_at - killed_at:.2f}s after the kill; "
          f"{dedup_before_release} polls deduplicated meanwhile")
    assert ended_at >= killed_at, "the execution was ended while its step still ran"
    # LOAD_SLACK is what a busy machine may add. A claim left behind would block the context.
    assert sweep_delay <= LEASE + SWEEP + LOAD_SLACK, f"ended {sweep_delay:.2f}s after the kill"
    assert 0 <= refire_delay <= 2 * INTERVAL + LOAD_SLACK, f"fired {refire_delay:.2f}s after the release"
    assert again["context_hash"] == lost["context_hash"]
    assert {again["execution_id"]} <= {r["execution_id"] for r in records(redis_client, f"steps:{name}")}
    ran_on = {s["execution_id"]: s["ppid"] for s in records(redis_client, f"started:{name}")}
    assert ran_on[again["execution_id"]] == survivor.pid
    assert poller.running() and survivor.running()

    # Nothing is left behind: every row final, no claim held by an ended execution.
    wait_until(lambda: all(r["status"] in FINAL_STATUSES for r in history(sqlite_store, name)), 15,
               "every execution to end", project)
    assert leaked_claims(sqlite_store) == []
    statuses = [r["status"] for r in history(sqlite_store, name)]
    assert statuses.count("lost") + statuses.count("failed") == 1, statuses
