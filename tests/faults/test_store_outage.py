"""Issue #7, case 3: the store's database is unreachable for 10 s (DESIGN §2.1, §2.5).

PostgreSQL is reached through a TCP proxy in the test process; the test
cuts it (new connections refused, open ones dropped) for 10 s and restores
it. Meanwhile beat keeps sending dispatch ticks and sweeps, and the test
sends manual polls (as ``cloaca poll`` or the admin's "poll now" do). Each
failed poll says so in one log line, the per-tick failures (dispatch, sweep)
are throttled, nothing logs a traceback, no process dies or is restarted,
and polls, fires and a workflow caught in the middle all carry on once the
database answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.engine import make_url

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import FINAL_STATUSES
from tests.e2e.harness import CeleryProject, records, wait_until
from tests.faults.helpers import (
    ALL_QUEUES,
    faults_project,
    history,
    leaked_claims,
    log_lines,
    log_time,
    pool_children,
)
from tests.faults.proxy import TcpProxy
from tests.support.services import POSTGRES_URL

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INTERVAL = 0.5
OUTAGE = 10.0
MANUAL_POLLS = 6
POOL = 3
THROTTLE = 10.0  # cloaca's per-process throttle of repeated dispatch/sweep failures (logs.log_throttled)


def _through(proxy: TcpProxy, schema: str) -> str:
    url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=proxy.port,
                                     query={"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def _single_line(log: str, needle: str) -> list[str]:
    """The records containing ``needle`` that continue on further lines (a traceback, a long error)."""
    lines = log.splitlines()
    return [line for i, line in enumerate(lines)
            if needle in line and i + 1 < len(lines) and not lines[i + 1].startswith("[")]


def test_store_outage_logs_one_line_per_failure_keeps_every_process_and_recovers_by_itself(
    pg_schema: str, pg_store: SqlStore, pg_proxy: TcpProxy, redis_url: str, redis_client: Any,
    launch: Callable[..., CeleryProject],
) -> None:
    project = faults_project(
        launch, broker_url=redis_url, database_url=_through(pg_proxy, pg_schema),
        triggers=f"tick:tick:{INTERVAL}s,jobs:counter:1s",
        sweep_interval="1s", poll_time_limit="2s", record_tasks="1",
    )
    worker = project.worker("-Q", ALL_QUEUES, concurrency=POOL)
    beat = project.beat()
    worker.wait_for_log("ready", timeout=30)
    wait_until(lambda: len(records(redis_client, "polls:tick")) >= 3, 30, "polling to start", project)
    pool = pool_children(worker.pid)
    assert len(pool) == POOL

    # One workflow is in the middle of its step when the database goes away.
    redis_client.set("sleep:jobs", 3)
    redis_client.set("go:jobs", 1)
    caught = wait_until(lambda: records(redis_client, "started:jobs"), 20, "a step to start", project)[0]
    redis_client.delete("go:jobs")
    time.sleep(0.5)

    log_before = len(worker.log())
    pg_proxy.cut()
    cut_at = time.time()
    client = Celery("faults-client", broker=redis_url, set_as_current=False)
    try:
        for _ in range(MANUAL_POLLS):
            time.sleep(OUTAGE / (MANUAL_POLLS + 1))
            client.send_task("cloaca.poll", args=("tick",), expires=5)
        time.sleep(max(0.0, cut_at + OUTAGE - time.time()))
    finally:
        client.close()
    outage_log = worker.log()[log_before:]
    pg_proxy.restore()
    restored_at = time.time()

    def after(key: str, t: float) -> list[dict[str, Any]]:
        return [p for p in records(redis_client, key) if p["t"] > t]

    # -- recovery, without restarting anything --------------------------------------
    first = wait_until(lambda: after("polls:tick", restored_at), 20, "polls to resume", project)[0]
    resumed_after = first["t"] - restored_at
    assert resumed_after <= 5.0, f"polls resumed {resumed_after:.1f}s after the database returned"
    redis_client.set("go:jobs", 1)
    redis_client.set("sleep:jobs", 0)
    wait_until(lambda: any(r["status"] == "succeeded" and r["started_at"].timestamp() > restored_at
                           for r in history(pg_store, "jobs")), 20, "a fire after the outage", project)
    redis_client.delete("go:jobs")
    ended = wait_until(
        lambda: (row := pg_store.get_execution(caught["execution_id"]))["status"] in FINAL_STATUSES and row,
        30, "the workflow caught by the outage to end", project,
    )
    wait_until(lambda: all(r["status"] in FINAL_STATUSES for r in history(pg_store, "jobs")), 15,
               "every execution to end", project)
    assert leaked_claims(pg_store) == []
    assert worker.running() and beat.running()
    assert pool_children(worker.pid) == pool, "a pool process died or was replaced"

    # -- what the outage looked like in the worker's log -----------------------------
    log = worker.log()
    since_cut = log[log_before:]
    attempts = {
        task: [a for a in records(redis_client, f"attempts:{task}") if cut_at < a["t"] < restored_at]
        for task in ("cloaca.poll", "cloaca.dispatch", "cloaca.sweep")
    }
    polls_failed = log_lines(outage_log, "tick: not polled: the store is unreachable")
    dispatch_failed = log_lines(outage_log, "dispatch: the store is unreachable")
    sweep_failed = log_lines(outage_log, "sweep: the store is unreachable")
    unreachable = log_lines(outage_log, "unreachable")
    per_process = int(OUTAGE // THROTTLE) + 1

    assert len(attempts["cloaca.poll"]) >= MANUAL_POLLS
    assert len(polls_failed) >= MANUAL_POLLS, polls_failed  # each failed poll says so...
    assert len(polls_failed) <= len(attempts["cloaca.poll"]), polls_failed  # ...once
    assert "OperationalError" in polls_failed[0], polls_failed[0]
    assert 1 <= len(dispatch_failed) <= min(len(attempts["cloaca.dispatch"]), POOL * per_process), (
        dispatch_failed)
    assert len(sweep_failed) <= min(len(attempts["cloaca.sweep"]), POOL * per_process), sweep_failed
    assert len(unreachable) == len(polls_failed) + len(dispatch_failed) + len(sweep_failed), unreachable
    assert _single_line(since_cut, "unreachable") == [], "a store-unreachable record spans several lines"
    assert "Traceback" not in since_cut, since_cut[since_cut.index("Traceback") - 2000:][:6000]
    assert "Traceback" not in beat.log()[-20000:]
    ticks_out = [log_time(line) for line in polls_failed]
    assert all(cut_at - 0.5 <= t <= restored_at + 0.5 for t in ticks_out)

    print(f"\ncase 3: {len(attempts['cloaca.poll'])} polls, {len(attempts['cloaca.dispatch'])} dispatch "
          f"ticks and {len(attempts['cloaca.sweep'])} sweeps attempted during the {OUTAGE:g}s outage; "
          f"{len(polls_failed)} 'not polled' lines, {len(dispatch_failed)} dispatch and {len(sweep_failed)} "
          f"sweep lines, 0 tracebacks; polls resumed {resumed_after:.1f}s after the database returned; "
          f"the workflow caught in the outage ended {ended['status']}; pids unchanged")
