"""Liveness by lease, with real worker and beat processes (issue 13).

A live execution is never declared lost: a long step on a solo worker, a step
waiting to retry longer than its lease, a workflow longer than every timeout,
a failed branch whose sibling still runs. A dead one is recovered: its
worker SIGKILLed, it ends ``lost`` and its context fires again, on Redis and
on RabbitMQ. Clocks: beat 5 s behind and a worker 5 s ahead (libfaketime),
polls stay on time and deduplication holds.

Every trigger fires the same context on every poll while the test lets it,
so a second copy would start the moment the first one's claim were freed.
Each test asserts, from the steps' own start and end marks (stamped with
Redis's clock, which every process shares), that no two executions of the
context overlapped, and what the history says.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cloaca_celery import DefaultRunner
from tests.e2e.harness import CeleryProject, app_env, history, records, wait_until
from tests.support.services import need_service, need_tool

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MODULE = "e2e_liveness"
LEASE = {"E2E_HEARTBEAT_INTERVAL": "1s", "E2E_HEARTBEAT_MISSES": "2", "E2E_SWEEP_INTERVAL": "500ms"}


def _env(redis_url: str, database_url: str, trigger: str, **extra: str) -> dict[str, str]:
    return app_env(redis_url, database_url, trigger, **{**LEASE, **extra})


def marks(client: Any, trigger: str) -> list[dict[str, Any]]:
    return records(client, f"marks:{trigger}")


def spans(found: list[dict[str, Any]], killed_at: float | None = None) -> dict[str, tuple[float, float]]:
    """Each execution's span, from its first step's start to its last step's end (or the kill)."""
    by_execution: dict[str, list[dict[str, Any]]] = {}
    for m in found:
        by_execution.setdefault(m["execution_id"], []).append(m)
    result = {}
    for execution_id, items in by_execution.items():
        start = min(m["t"] for m in items if m["event"] == "start")
        ends = [m["t"] for m in items if m["event"] == "end"]
        started = [m for m in items if m["event"] == "start"]
        unfinished = len(started) > len([m for m in items if m["event"] in ("end", "retry")])
        end = killed_at if unfinished and killed_at is not None else max(ends or [start])
        result[execution_id] = (start, end)
    return result


def assert_never_overlapped(found: list[dict[str, Any]], killed_at: float | None = None) -> None:
    ordered = sorted(spans(found, killed_at).items(), key=lambda item: item[1][0])
    for (first, (_, first_end)), (second, (second_start, _)) in itertools.pairwise(ordered):
        assert second_start >= first_end, (
            f"execution {second} started at {second_start:.3f} while {first} ran until {first_end:.3f}"
        )


def stop_firing(client: Any, trigger: str, runner: DefaultRunner, project: CeleryProject) -> None:
    """No new fire after this: switched off, then every execution it started has ended."""
    runner.set_trigger_enabled(trigger, False)
    client.delete(f"go:{trigger}")
    wait_until(lambda: all(r["status"] not in ("queued", "running") for r in history(runner, trigger)),
               60, "every execution to end", project)


def test_a_long_step_on_a_solo_worker_is_never_declared_lost(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    trigger = "solo_long"
    project = launch(MODULE, **_env(redis_url, store_url, trigger))
    redis_client.set(f"sleep:{trigger}", 8)  # four leases of 2 s
    solo = project.worker("-P", "solo", name="solo")
    project.beat()
    redis_client.set(f"go:{trigger}", 1)
    wait_until(lambda: marks(redis_client, trigger), 60, "the long step to start on the solo worker", project)
    # The solo worker is busy for 8 s and answers nobody; a second worker polls meanwhile and
    # would start the same context again if the claim were freed.
    project.worker(name="poller")
    wait_until(lambda: len([m for m in marks(redis_client, trigger) if m["event"] == "end"]) >= 2, 90,
               "a second execution to run after the first", project)
    stop_firing(redis_client, trigger, runner, project)
    found = marks(redis_client, trigger)
    assert_never_overlapped(found)
    rows = history(runner, trigger)
    assert {r["status"] for r in rows} == {"succeeded"}, rows
    first = min(rows, key=lambda r: r["started_at"])
    assert next(m["hostname"] for m in found if m["execution_id"] == first["execution_id"]).startswith("solo")
    assert "lost" not in solo.log()
    print(f"\ncase solo: {len(rows)} executions, none lost, none overlapped; the first ran 8 s on a solo "
          f"worker with a 2 s lease")


def test_a_step_waiting_to_retry_longer_than_its_lease_is_never_declared_lost(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    trigger = "retry_wait"
    project = launch(MODULE, **_env(redis_url, store_url, trigger, E2E_RETRY_COUNTDOWN="6"))
    project.worker(concurrency=2)
    project.worker(concurrency=2, name="other")
    project.beat()
    redis_client.set(f"go:{trigger}", 1)

    def retried() -> list[dict[str, Any]]:
        return [m for m in marks(redis_client, trigger) if m["event"] == "end"]

    wait_until(retried, 60, "the retried attempt to end", project)
    stop_firing(redis_client, trigger, runner, project)
    found = marks(redis_client, trigger)
    assert_never_overlapped(found)
    rows = history(runner, trigger)
    assert rows and {r["status"] for r in rows} == {"succeeded"}, rows
    first = [m for m in found if m["execution_id"] == retried()[0]["execution_id"]]
    waited = min(m["t"] for m in first if m.get("attempt") == 1) - min(m["t"] for m in first)
    assert waited >= 5.0, f"the retry came after {waited:.1f}s, not after its 6 s countdown"
    print(f"\ncase retry: waited {waited:.1f}s to retry with a 2 s lease; {len(rows)} execution(s), "
          "none lost, none overlapped")


def test_a_workflow_longer_than_every_timeout_is_never_declared_lost(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    trigger = "marathon"
    project = launch(MODULE, **_env(redis_url, store_url, trigger, E2E_QUEUED_TIMEOUT="2s"))
    redis_client.set(f"sleep:{trigger}", 4)  # two legs of 4 s: 8 s, four leases, four queued timeouts
    project.worker(concurrency=2)
    project.beat()
    redis_client.set(f"go:{trigger}", 1)
    wait_until(lambda: len([m for m in marks(redis_client, trigger) if m["event"] == "end"]) >= 4, 90,
               "two whole workflows", project)
    stop_firing(redis_client, trigger, runner, project)
    assert_never_overlapped(marks(redis_client, trigger))
    rows = history(runner, trigger)
    assert len(rows) >= 2 and {r["status"] for r in rows} == {"succeeded"}, rows
    longest = max((r["completed_at"] - r["started_at"]).total_seconds() for r in rows)
    assert longest >= 8.0
    print(f"\ncase marathon: {len(rows)} executions of {longest:.1f}s with a 2 s lease and a 2 s queued "
          "timeout, none lost, none overlapped")


def test_a_failed_branch_ends_its_execution_only_when_its_sibling_has(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    trigger = "branch_fail"
    project = launch(MODULE, **_env(redis_url, store_url, trigger))
    redis_client.set(f"sleep:{trigger}", 4)
    project.worker(concurrency=4)
    project.beat()
    redis_client.set(f"go:{trigger}", 1)

    def siblings_ended() -> list[dict[str, Any]]:
        found = marks(redis_client, trigger)
        return [m for m in found if m["step"] == "slow_sibling" and m["event"] == "end"]

    wait_until(lambda: len(siblings_ended()) >= 2, 90, "two executions' slow branches to end", project)
    stop_firing(redis_client, trigger, runner, project)
    found = marks(redis_client, trigger)
    assert_never_overlapped(found)
    rows = history(runner, trigger)
    assert len(rows) >= 2 and {r["status"] for r in rows} == {"failed"}, rows
    assert all("this branch fails" in (r["error"] or "") for r in rows), [r["error"] for r in rows]
    for row in rows:
        own = [m for m in found if m["execution_id"] == row["execution_id"]]
        failed = max(m["t"] for m in own if m["step"] == "fails_fast")
        sibling = [m["t"] for m in own if m["step"] == "slow_sibling" and m["event"] == "end"]
        # The failure came ~4 s before the sibling's end; the execution ended after it.
        if sibling:
            assert row["completed_at"].timestamp() >= sibling[0] - 0.5 > failed, (row, own)
    print(f"\ncase branch: {len(rows)} executions ended failed after their running sibling, none overlapped")


def _kill_and_recover(project: CeleryProject, redis_client: Any, runner: DefaultRunner, trigger: str,
                      broker: str) -> None:
    redis_client.set(f"sleep:{trigger}", 60)
    victim = project.worker(concurrency=1, name="victim")
    project.beat()
    redis_client.set(f"go:{trigger}", 1)
    started = wait_until(lambda: marks(redis_client, trigger), 60, "the step to start", project)
    assert started[0]["hostname"].startswith("victim")
    project.worker(concurrency=2, name="survivor")
    redis_client.set(f"sleep:{trigger}", 1)  # the next executions are short
    victim.kill()
    killed_at = float(redis_client.time()[0]) + redis_client.time()[1] / 1e6
    first = started[0]["execution_id"]

    def lost() -> dict[str, Any] | None:
        return next((r for r in history(runner, trigger)
                     if r["execution_id"] == first and r["status"] == "lost"), None)

    row = wait_until(lost, 90, "the killed worker's execution to end lost", project)
    again = wait_until(lambda: [m for m in marks(redis_client, trigger)
                                if m["execution_id"] != first and m["event"] == "start"], 60,
                       "the same context to fire again", project)
    stop_firing(redis_client, trigger, runner, project)
    assert "lease ran out" in (row["error"] or ""), row
    assert again[0]["hostname"].startswith("survivor")
    assert_never_overlapped(marks(redis_client, trigger), killed_at=killed_at)
    recovered = again[0]["t"] - killed_at
    print(f"\ncase kill ({broker}): ended lost {row['completed_at'].timestamp() - killed_at:.1f}s after the "
          f"SIGKILL; the same context ran again {recovered:.1f}s after it, on the survivor (lease 2 s)")


def test_a_killed_workers_execution_ends_lost_and_its_context_fires_again_on_redis(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project = launch(MODULE, **_env(redis_url, store_url, "killed"))
    _kill_and_recover(project, redis_client, runner, "killed", "Redis")


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own (guest may use it), deleted afterwards."""
    need_service("RabbitMQ", "127.0.0.1", 5672)
    vhost = f"cloaca-{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


def test_a_killed_workers_execution_ends_lost_and_its_context_fires_again_on_rabbitmq(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner, rabbitmq_vhost: str,
) -> None:
    project = launch(MODULE, **_env(redis_url, store_url, "killed", E2E_BROKER_URL=rabbitmq_vhost))
    _kill_and_recover(project, redis_client, runner, "killed", "RabbitMQ")


def _faketime(offset: str) -> dict[str, str]:
    """Environment that runs a process with its clock shifted by ``offset`` (libfaketime).

    Without ``DONT_FAKE_MONOTONIC`` the monotonic clock moves with it, as Python's ``time.sleep``
    needs; the marks compared across processes use Redis's clock instead.
    """
    library = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    need_tool("libfaketime", os.path.exists(library), "apt-get install faketime")
    return {"LD_PRELOAD": library, "FAKETIME": offset}


def test_beat_behind_and_a_worker_ahead_still_poll_on_time_and_never_overlap(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, pg_store_url: str,
) -> None:
    trigger = "skewed"
    project = launch(MODULE, **_env(redis_url, pg_store_url, trigger, E2E_INTERVAL="500ms"))
    redis_client.set(f"sleep:{trigger}", 2)
    worker = project.worker(concurrency=2, name="ahead", env=_faketime("+5s"))
    beat = project.beat(env=_faketime("-5s"))
    worker.wait_for_log("s ahead of the store's", timeout=60)
    beat.wait_for_log("s behind the store's", timeout=60)
    wait_until(lambda: redis_client.llen(f"polls:{trigger}") >= 4, 60, "polling to start", project)
    redis_client.set(f"go:{trigger}", 1)
    wait_until(lambda: len([m for m in marks(redis_client, trigger) if m["event"] == "end"]) >= 3, 90,
               "three executions", project)
    redis_client.delete(f"go:{trigger}")
    wait_until(lambda: len({m["execution_id"] for m in marks(redis_client, trigger)})
               == len([m for m in marks(redis_client, trigger) if m["event"] == "end"]), 30,
               "the last execution to end", project)
    assert_never_overlapped(marks(redis_client, trigger))
    polls = [json.loads(x)["t"] for x in redis_client.lrange(f"polls:{trigger}", 0, -1)]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    span = polls[-1] - polls[0]
    assert len(polls) >= 0.8 * (span / 0.5), f"{len(polls)} polls in {span:.1f}s of a 500 ms trigger"
    assert min(gaps) >= 0.2, f"two polls {min(gaps):.3f}s apart"
    print(f"\ncase clocks: beat -5 s, worker +5 s: {len(polls)} polls in {span:.1f}s (every "
          f"{span / (len(polls) - 1):.2f}s), min gap {min(gaps):.2f}s; executions never overlapped")
