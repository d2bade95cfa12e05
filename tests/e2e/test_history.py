"""Execution history with real worker and beat processes (DESIGN §2.2, §2.3, §2.6).

A fire writes one row that follows its workflow (queued, running, then
succeeded, failed or revoked), a skip writes none, every end releases the
claim, and switching a trigger off and on takes effect without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from cloaca_celery import DefaultRunner
from tests.e2e.harness import CeleryProject, app_env, history, records, wait_until
from tests.e2e.poll_reports import assert_one_poll_per_slot

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MODULE = "e2e_history"
ALL_QUEUES = "celery,e2e.steps"


def _wait_ready(project: CeleryProject) -> None:
    for proc in project.processes:
        if "beat" not in proc.name:
            proc.wait_for_log("ready", timeout=30)


def test_fire_writes_one_row_that_goes_queued_running_succeeded_and_skips_write_none(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_inbox"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", "celery", concurrency=2, name="poller")  # no worker for the steps yet
    project.beat()
    wait_until(lambda: redis_client.llen(f"polls:{name}") >= 25, 30, "25 skipping polls", project)
    assert history(runner, name) == []
    assert runner.get_trigger_schedule(name)["last_fire_at"] is None

    redis_client.set(f"hold:{name}", 1)
    redis_client.rpush(f"inbox:{name}", "a1")
    rows = wait_until(lambda: history(runner, name), 15, "the execution row", project)
    assert len(rows) == 1
    row = rows[0]
    # Nothing consumes the steps queue: the row must still be queued.
    assert row["status"] == "queued", row
    assert row["running_at"] is None and row["completed_at"] is None and row["error"] is None
    assert row["context"] == {"item": "a1"}
    assert row["trigger_name"] == name and row["workflow"] == "job"
    assert len(row["context_hash"]) == 64

    project.worker("-Q", "e2e.steps", concurrency=1, name="stepper")
    running = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "running"), None),
        30, "the row to turn running", project,
    )
    assert running["execution_id"] == row["execution_id"]
    assert running["running_at"] is not None and running["completed_at"] is None

    redis_client.delete(f"hold:{name}")
    done = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "succeeded"), None),
        15, "the row to turn succeeded", project,
    )
    assert done["execution_id"] == row["execution_id"]
    assert done["started_at"] <= done["running_at"] <= done["completed_at"], done
    assert done["error"] is None
    assert done["started_at"].tzinfo is not None

    # More skipping polls add nothing.
    polls = redis_client.llen(f"polls:{name}")
    wait_until(lambda: redis_client.llen(f"polls:{name}") >= polls + 10, 15, "10 more polls", project)
    assert [r["execution_id"] for r in history(runner, name)] == [row["execution_id"]]
    assert records(redis_client, f"steps:{name}")[0]["execution_id"] == row["execution_id"]


def test_failing_step_ends_failed_with_its_error_and_releases_the_claim(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_fail"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", ALL_QUEUES, concurrency=4)
    project.beat()
    _wait_ready(project)
    redis_client.rpush(f"fail:{name}", "disk on fire")  # the first run raises, the next ones do not
    redis_client.set(f"go:{name}", 1)  # the same context on every poll

    failed = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "failed"), None),
        30, "a failed execution", project,
    )
    assert "RuntimeError: step exploded: disk on fire" in (failed["error"] or ""), failed
    assert failed["completed_at"] is not None and failed["completed_at"] >= failed["started_at"]

    # The claim was released by the failure: the same context fires again and succeeds.
    succeeded = wait_until(
        lambda: next((r for r in history(runner, name) if r["status"] == "succeeded"), None),
        30, "a second execution of the same context", project,
    )
    redis_client.delete(f"go:{name}")
    assert succeeded["context_hash"] == failed["context_hash"]
    assert succeeded["running_at"] >= failed["completed_at"]
    rows = history(runner, name)
    assert rows[-1]["execution_id"] == failed["execution_id"]  # the oldest row is the failed one
    assert [r["status"] for r in rows].count("failed") == 1
    log = project.logs()
    assert f"execution {failed['execution_id']} failed" in log


def test_revoked_step_ends_revoked_and_releases_the_claim(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_revoke"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", "celery", concurrency=2, name="poller")
    stepper = project.worker("-Q", "e2e.steps", concurrency=1, name="stepper")
    project.beat()
    _wait_ready(project)
    client = Celery("e2e-client", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        # Occupy the only process of the steps worker, so the workflow's first step queues behind it.
        redis_client.set("hold:block", 1)
        client.send_task("e2e_history.block", queue="e2e.steps")
        wait_until(lambda: redis_client.llen("block:started"), 20, "the blocking task to start", project)
        redis_client.set(f"go:{name}", 1)
        first = wait_until(lambda: history(runner, name), 20, "the first execution row", project)[0]
        assert first["status"] == "queued"
        first_task = f"{first['execution_id']}-1"
        client.control.revoke(first_task)
        stepper.wait_for_log(f"Tasks flagged as revoked: {first_task}", timeout=10)
        redis_client.delete("hold:block")

        revoked = wait_until(
            lambda: next((r for r in history(runner, name)
                          if r["execution_id"] == first["execution_id"] and r["status"] == "revoked"), None),
            20, "the revoked execution to end revoked", project,
        )
        assert first_task in (revoked["error"] or ""), revoked
        assert revoked["completed_at"] is not None and revoked["running_at"] is None
        # The claim is gone: the same context fires again, and this time it runs.
        again = wait_until(
            lambda: next((r for r in history(runner, name) if r["status"] == "succeeded"), None),
            30, "a new execution of the same context", project,
        )
        redis_client.delete(f"go:{name}")
        assert again["context_hash"] == first["context_hash"]
        assert again["execution_id"] != first["execution_id"]
        ran = {s["execution_id"] for s in records(redis_client, f"started:{name}")}
        assert first["execution_id"] not in ran, "the revoked step ran anyway"
        assert "revoked" in stepper.log().lower()
    finally:
        client.close()


def test_terminating_a_running_step_ends_revoked_and_releases_the_claim(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_revoke"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", ALL_QUEUES, concurrency=2).wait_for_log("ready", timeout=30)
    project.beat()
    redis_client.set(f"hold:{name}", 1)  # the step waits while this key exists
    redis_client.set(f"go:{name}", 1)
    started = wait_until(lambda: records(redis_client, f"started:{name}"), 20, "the step to start",
                         project)[0]
    client = Celery("e2e-client", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        client.control.revoke(f"{started['execution_id']}-1", terminate=True)
    finally:
        client.close()
    revoked = wait_until(
        lambda: next((r for r in history(runner, name)
                      if r["execution_id"] == started["execution_id"] and r["status"] == "revoked"), None),
        15, "the terminated execution to end revoked", project,
    )
    assert revoked["running_at"] is not None and revoked["completed_at"] >= revoked["running_at"]
    # Claim released: the same context fires again (and waits in its step like the first).
    first = started["execution_id"]
    again = wait_until(
        lambda: next((r for r in history(runner, name) if r["execution_id"] != first), None),
        15, "a new execution of the same context", project,
    )
    redis_client.delete(f"go:{name}", f"hold:{name}")
    assert again["context_hash"] == revoked["context_hash"]
    finished = {s["execution_id"] for s in records(redis_client, f"steps:{name}")}
    assert first not in finished, "the terminated step finished anyway"


def test_disabling_and_enabling_a_trigger_takes_effect_without_a_restart(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_toggle"
    interval = 0.2
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    worker = project.worker("-Q", ALL_QUEUES, concurrency=2)
    beat = project.beat()
    wait_until(lambda: redis_client.llen(f"polls:{name}") >= 5, 30, "5 polls", project)

    def polls() -> list[dict[str, Any]]:
        return records(redis_client, f"polls:{name}")

    runner.set_trigger_enabled(name, False)
    off = time.time()
    assert runner.get_trigger_schedule(name)["enabled"] is False
    # Proving an absence takes a wait: ten intervals with the trigger off.
    time.sleep(10 * interval)
    # A poll sent just before the switch may still run, however late; none may be sent after it.
    # The dispatcher claims only slots already due, so a slot due after the switch was claimed
    # after it.
    late = [p for p in polls() if p["due"] > off]
    assert late == [], f"{len(late)} slots polled after disabling"

    runner.set_trigger_enabled(name, True)
    on = time.time()
    wait_until(lambda: len([p for p in polls() if p["t"] > on]) >= 5, 10, "polling to resume", project)
    resumed = [p for p in polls() if p["t"] > on]
    # At the next dispatch tick (50 ms) in an idle test; 3 s leaves room for a loaded machine.
    assert resumed[0]["t"] - on < 3.0, f"first poll {resumed[0]['t'] - on:.2f}s after enabling"
    assert_one_poll_per_slot(resumed, interval)
    assert worker.running() and beat.running()  # nobody was restarted


def test_execution_history_is_newest_first(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    name = "hist_inbox"
    project = launch(MODULE, **app_env(redis_url, store_url, name))
    project.worker("-Q", ALL_QUEUES, concurrency=2)
    project.beat()
    _wait_ready(project)
    items = ["e1", "e2", "e3", "e4", "e5"]
    redis_client.rpush(f"inbox:{name}", *items)  # one fire per poll, in this order
    wait_until(
        lambda: [r["status"] for r in history(runner, name)] == ["succeeded"] * len(items),
        30, "five succeeded executions", project,
    )
    newest_first = runner.get_trigger_execution_history(name)
    assert [r["context"]["item"] for r in newest_first] == items[::-1]
    starts = [r["started_at"] for r in newest_first]
    assert starts == sorted(starts, reverse=True) and len(set(starts)) == len(starts)
    assert len({r["execution_id"] for r in newest_first}) == len(items)
    page = runner.get_trigger_execution_history(name, limit=2, offset=1)
    assert [r["context"]["item"] for r in page] == ["e4", "e3"]
    with pytest.raises(KeyError):
        runner.get_trigger_execution_history("no_such_trigger")
