"""Recovery with real processes (DESIGN §2.3 and trigger state in §1).

A worker SIGKILLed in the middle of a step never reports the end of its
workflow: the registry's sweep finds it through the result backend and a
ping, frees the claim, and the trigger fires again on the surviving worker.
A trigger's ``state`` carries its failure count across worker processes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from cloaca_celery import DefaultRunner
from tests.e2e.harness import CeleryProject, app_env, history, records, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MODULE = "e2e_history"
ALL_QUEUES = "celery,e2e.steps"


def _row(runner: DefaultRunner, name: str, execution_id: str) -> dict[str, Any]:
    return next(r for r in history(runner, name) if r["execution_id"] == execution_id)


def test_execution_on_a_killed_worker_ends_lost_and_its_context_fires_again(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "recover"
    project = launch(MODULE, **app_env(
        redis_url, store_url, name,
        E2E_HEARTBEAT_INTERVAL="1s", E2E_HEARTBEAT_MISSES="2", E2E_SWEEP_INTERVAL="1s",
        # A poll killed with its worker holds the trigger's poll lease until it expires
        # (time limit + 10 s); keep that short so the test's bound covers the worst case.
        E2E_POLL_TIME_LIMIT="2s",
    ))
    workers = {p.pid: p for p in (project.worker("-Q", ALL_QUEUES, concurrency=2, name=f"w{i}")
                                  for i in (1, 2))}
    project.beat()
    for worker in workers.values():
        worker.wait_for_log("ready", timeout=30)
    redis_client.set(f"sleep_once:{name}", 30)  # the first run hangs in its step, later runs are quick
    redis_client.set(f"go:{name}", 1)  # the same context on every poll

    first = wait_until(lambda: records(redis_client, f"started:{name}"), 20, "the step to start",
                       project)[0]
    victim = workers[first["ppid"]]
    survivor = next(w for pid, w in workers.items() if pid != first["ppid"])
    assert first["hostname"].startswith(victim.name + "-")
    assert _row(runner, name, first["execution_id"])["status"] == "running"
    victim.kill()
    killed_at = time.time()

    lost = wait_until(
        lambda: (row := _row(runner, name, first["execution_id"]))["status"] in ("lost", "failed") and row,
        25, "the sweep to end the execution of the killed worker", project,
    )
    ended_after = time.time() - killed_at
    assert lost["status"] == "lost", lost
    assert first["hostname"] in (lost["error"] or ""), lost  # "... running on worker <name> ..."
    assert ended_after < 15, f"ended {ended_after:.1f}s after the kill"

    again = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "succeeded"), None),
        20, "the same context to fire again and succeed", project,
    )
    redis_client.delete(f"go:{name}")
    assert again["context_hash"] == lost["context_hash"]
    assert again["started_at"] >= lost["completed_at"]
    ran = {s["execution_id"]: s for s in records(redis_client, f"started:{name}")}
    assert ran[again["execution_id"]]["ppid"] == survivor.pid
    assert survivor.running()
    assert f"execution {first['execution_id']} of workflow 'job' marked lost by the sweep" in survivor.log()
    assert [r["execution_id"] for r in history(runner, name)][-1] == first["execution_id"]


def test_execution_on_a_killed_worker_ends_lost_even_if_the_worker_comes_back_under_its_name(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "recover"
    # A lease long enough for the crashed worker to be back before it runs out: the
    # crash-and-restart case, not the crash-and-gone case of the test above.
    project = launch(MODULE, **app_env(
        redis_url, store_url, name, E2E_HEARTBEAT_INTERVAL="2s", E2E_HEARTBEAT_MISSES="5",
        E2E_SWEEP_INTERVAL="1s", E2E_POLL_TIME_LIMIT="2s",
    ))
    # Fixed node names, as a deployment has them (celery@host); the later -n wins over the harness's.
    nodes = {}
    for node in ("e2e-a", "e2e-b"):
        proc = project.worker("-Q", ALL_QUEUES, "-n", f"{node}@%h", concurrency=2, name=node)
        nodes[proc.pid] = (proc, node)
    project.beat()
    for proc, _ in nodes.values():
        proc.wait_for_log("ready", timeout=30)
    redis_client.set(f"sleep_once:{name}", 30)
    redis_client.set(f"go:{name}", 1)

    first = wait_until(lambda: records(redis_client, f"started:{name}"), 20, "the step to start",
                       project)[0]
    victim, node = nodes[first["ppid"]]
    assert first["hostname"].startswith(f"{node}@")
    victim.kill()
    # The crashed worker is restarted under its name (systemd, supervisord, a container restart).
    project.worker("-Q", ALL_QUEUES, "-n", f"{node}@%h", concurrency=2,
                   name=f"{node}-restarted").wait_for_log("ready", timeout=30)
    assert _row(runner, name, first["execution_id"])["status"] == "running"

    lost = wait_until(
        lambda: (row := _row(runner, name, first["execution_id"]))["status"] != "running" and row,
        25, "the sweep to end the execution the crash killed", project,
    )
    assert lost["status"] == "lost", lost
    again = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "succeeded"), None),
        15, "the same context to fire again and succeed", project,
    )
    redis_client.delete(f"go:{name}")
    assert again["context_hash"] == lost["context_hash"]


def test_a_step_of_an_execution_declared_lost_never_runs_when_the_broker_redelivers_it(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "recover"
    # The defaults (cloaca_queued_timeout 6 h, Redis visibility_timeout 1 h) scaled down to 3 s and 10 s:
    # the first step never starts (its worker dies holding it), so the queued timeout ends it.
    project = launch(MODULE, **app_env(
        redis_url, store_url, name, E2E_QUEUED_TIMEOUT="3s", E2E_SWEEP_INTERVAL="1s",
        E2E_VISIBILITY_TIMEOUT="10",
    ))
    project.worker("-Q", "celery", concurrency=2, name="poller")
    victim = project.worker("-Q", "e2e.steps", concurrency=1, name="victim")
    project.beat()
    for proc in project.processes[:2]:
        proc.wait_for_log("ready", timeout=30)
    client = Celery("e2e-client", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        # The victim's only process is busy, so the first step waits there, prefetched.
        redis_client.set("hold:block", 1)
        client.send_task("e2e_history.block", queue="e2e.steps")
        wait_until(lambda: redis_client.llen("block:started"), 20, "the blocking task to start", project)
    finally:
        client.close()
    redis_client.set(f"sleep:{name}", 6)
    redis_client.set(f"go:{name}", 1)
    first = wait_until(lambda: history(runner, name), 20, "the first execution", project)[-1]
    stale = f"{first['execution_id']}-1"
    victim.wait_for_log(f"job_step[{stale}] received", timeout=10)
    victim.kill()  # a crash: the prefetched message is neither run nor acknowledged
    redis_client.delete("hold:block")
    stepper = project.worker("-Q", "e2e.steps", concurrency=2, name="stepper")

    lost = wait_until(
        lambda: (row := _row(runner, name, first["execution_id"]))["status"] == "lost" and row,
        15, "the sweep to declare the first execution lost", project,
    )
    assert lost["running_at"] is None
    wait_until(lambda: any(r["status"] == "running" for r in history(runner, name)), 15,
               "a new execution of the same context", project)

    def stale_step_handled() -> bool:
        started = {s["execution_id"] for s in records(redis_client, f"started:{name}")}
        outcome = [line for line in stepper.log().splitlines() if stale in line and "received" not in line]
        return first["execution_id"] in started or bool(outcome)

    wait_until(stale_step_handled, 25, "the broker to redeliver the stale step", project)
    redis_client.delete(f"go:{name}")
    started = {s["execution_id"] for s in records(redis_client, f"started:{name}")}
    assert first["execution_id"] not in started, "the step of an execution declared lost ran"
    spans = sorted((s["start"], s["end"]) for s in records(redis_client, f"steps:{name}"))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two steps of one context ran at once: {spans}"


HEALTH_SCRIPT = ["fail", "fail", "ok", "fail", "fail", "fail", "fail", "fail", "fail", "fail", "ok",
                 "fail", "fail", "fail", "fail"] * 2


def _expected_health(script: list[str]) -> tuple[list[int], list[int], int]:
    """Poll numbers that fire, the failure count each poll sees, and the final count."""
    fires, before, failures = [], [], 0
    for index, item in enumerate(script, start=1):
        before.append(failures)
        if item == "ok":
            failures = 0
            continue
        failures += 1
        if failures >= 3:
            failures = 0
            fires.append(index)
    return fires, before, failures


def test_trigger_state_counts_failures_across_worker_processes(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    fires, before, final = _expected_health(HEALTH_SCRIPT)
    assert fires == [6, 9, 14, 17, 21, 24, 29] and final == 1
    redis_client.rpush("health:script", *HEALTH_SCRIPT)  # one health result per poll
    # A dispatcher tick of 200 ms (not the default twentieth of the interval) keeps the
    # recycling below from spending the pool on forks for dispatch ticks.
    project = launch(MODULE, **app_env(redis_url, store_url, "health", E2E_DISPATCH_INTERVAL="200ms"))
    # Prefork hands most tasks to its first idle process; recycling each process after two
    # tasks makes the polls run in many different processes, as they may in production.
    project.worker("-Q", ALL_QUEUES, "--max-tasks-per-child", "2", concurrency=4)
    project.beat()

    # Thirty polls take 6 s; forking a process every other task is slow on a busy machine,
    # where most polls then expire unrun (the script waits for the next).
    wait_until(lambda: redis_client.llen("polls:health") >= len(HEALTH_SCRIPT), 120,
               "every scripted health check", project)
    wait_until(
        lambda: [r["status"] for r in history(runner, "health")] == ["succeeded"] * len(fires),
        60, f"{len(fires)} recovery executions", project,
    )
    polls = records(redis_client, "polls:health")
    assert [p["index"] for p in polls] == list(range(1, len(HEALTH_SCRIPT) + 1))
    # The count each poll found in its state is the one the previous poll left, whichever
    # process ran it: a module global would restart from 0 in every pool process.
    assert [p["before"] for p in polls] == before
    assert len({p["pid"] for p in polls}) >= len(polls) // 3, "the polls did not spread over processes"
    rows = history(runner, "health")
    assert sorted(r["context"]["poll"] for r in rows) == fires
    assert all(r["context"]["consecutive_failures"] == 3 and r["context"]["service"] == "api" for r in rows)
    # The last poll saves its state just after it reported to Redis: wait for that write.
    schedule = wait_until(
        lambda: (row := runner.get_trigger_schedule("health"))["state"] == {"failures": final} and row,
        10, "the last poll's state to be saved", project,
    )
    assert schedule["state"] == {"failures": final}
    assert schedule["consecutive_errors"] == 0
