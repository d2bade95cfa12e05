"""Issue #7, case 1: a worker SIGKILLed in the middle of a workflow (DESIGN §2.2, §2.3).

The killed step never reports its end. The registry's sweep looks at
executions older than ``cloaca_claim_grace`` every ``cloaca_sweep_interval``,
finds the step STARTED on a worker that no longer answers, ends the
execution as ``lost`` and frees its claim; the non-concurrent trigger, which
has been firing the same context all along (deduplicated), fires again at
its next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import FINAL_STATUSES
from tests.e2e.harness import CeleryProject, wait_until
from tests.faults.helpers import (
    STEPS_QUEUE,
    claim_rows,
    faults_project,
    history,
    leaked_claims,
    log_lines,
    log_time,
    records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

GRACE = 3.0
SWEEP = 0.5
INTERVAL = 0.5
INSPECT_TIMEOUT = 1.0  # the sweep asks the step's worker whether it still runs the step
LOAD_SLACK = 3.0  # what a busy machine may add to a delay measured here


def test_killed_worker_execution_ends_lost_claim_is_freed_and_the_trigger_fires_again(
    redis_url: str, redis_client: Any, sqlite_url: str, sqlite_store: SqlStore,
    launch: Callable[..., CeleryProject],
) -> None:
    name = "recover"
    project = faults_project(
        launch, broker_url=redis_url, database_url=sqlite_url, triggers=f"{name}:repeat:{INTERVAL}s",
        claim_grace=f"{GRACE}s", sweep_interval=f"{SWEEP}s", poll_time_limit="2s",
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

    lost = wait_until(ended, GRACE + 20, "the sweep to end the killed worker's execution", project)
    assert lost["status"] in ("lost", "failed"), lost
    assert first["hostname"] in (lost["error"] or ""), lost  # "...no longer active on worker <name>"
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

    started = lost["started_at"].timestamp()
    # The row's completed_at is the time the sweep started looking (before it asked the worker,
    # which takes up to INSPECT_TIMEOUT); the claim is freed when the sweep logs its verdict.
    verdict = log_lines(poller.log(), f"execution {first['execution_id']} of workflow 'fault_job' marked")
    assert len(verdict) == 1, verdict
    ended_at = log_time(verdict[0])
    refired_at = again["started_at"].timestamp()
    # The sweep looks at an execution once it is older than the grace period; the kill came earlier.
    free_from = max(started + GRACE, killed_at)
    sweep_delay = ended_at - free_from
    refire_delay = refired_at - ended_at
    print(f"\ncase 1: killed {killed_at - started:.2f}s after the fire; ended {lost['status']} "
          f"{ended_at - killed_at:.2f}s after the kill ({sweep_delay:.2f}s after the grace period ran out); "
          f"fired again {refire_delay:.2f}s after that ({refired_at - started - GRACE:.2f}s after the grace "
          f"period); {dedup_before_release} polls deduplicated meanwhile; "
          f"completed_at is {ended_at - lost['completed_at'].timestamp():.2f}s before the verdict")
    assert ended_at >= started + GRACE - 0.1, "the execution was ended before its grace period"
    # Idle, the first sweep that may look ends it and the next poll fires again; LOAD_SLACK is
    # what a busy machine may add. A claim left behind would block the context for its TTL (6 h).
    assert sweep_delay <= SWEEP + INSPECT_TIMEOUT + LOAD_SLACK, f"ended {sweep_delay:.2f}s after the grace"
    assert 0 <= refire_delay <= 2 * INTERVAL + LOAD_SLACK, f"fired {refire_delay:.2f}s after the release"
    assert refired_at - (started + GRACE) <= SWEEP + INSPECT_TIMEOUT + 2 * INTERVAL + LOAD_SLACK
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
