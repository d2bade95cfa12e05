"""Batched polls with a real worker and beat: each trigger in a batch keeps its own slot and outcome.

Every trigger of the app is ``batch=True`` and the dispatch tick is 500 ms, so
each message polls about half of them. Redis broker, SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from cloaca_celery.sqlstore import SqlStore
from tests.e2e.harness import CeleryProject, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CHEAP = 12


def _evals(client: Any, name: str, since: float = 0.0) -> list[tuple[float, str]]:
    rows = [x.decode().split() for x in client.lrange(f"evals:{name}", 0, -1)]
    return [(float(at), task) for at, task in rows if float(at) >= since]


def _project(launch: Callable[..., CeleryProject], redis_url: str, tmp_path: Path, odd: str) -> CeleryProject:
    return launch("e2e_batch", E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}",
                  E2E_BATCH_CHEAP=str(CHEAP), E2E_BATCH_ODD=odd)


def test_a_hanging_trigger_in_a_batch_does_not_delay_the_others_past_their_slots(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    project = _project(launch, redis_url, tmp_path, "hang")
    worker = project.worker(concurrency=3)
    worker.wait_for_log("ready", timeout=60)
    project.beat()
    wait_until(lambda: _evals(redis_client, "hang"), 40, "a poll of the hanging trigger", project)
    start = _evals(redis_client, "hang")[0][0]
    time.sleep(max(0.0, start + 6.0 - time.time()))
    window = (start + 1.0, start + 6.0)  # five seconds while it hangs, every poll cut at 2 s

    assert "sent on in a batch of their own" in worker.log(), "no batch was handed back"
    for i in range(CHEAP):
        polls = [at for at, _ in _evals(redis_client, f"cheap-{i:02d}") if window[0] <= at < window[1]]
        assert len(polls) >= 3, f"cheap-{i:02d} polled {len(polls)} times in 5 s beside a hanging trigger"
    tasks = {task for i in range(CHEAP) for _, task in _evals(redis_client, f"cheap-{i:02d}")}
    assert "cloaca.poll_batch" in tasks
    store = SqlStore(create_engine(f"sqlite:///{tmp_path / 'store.db'}"))
    try:
        hang = wait_until(lambda: (s := store.get_schedule("hang"))["consecutive_errors"] >= 1 and s, 20,
                          "the hanging poll to be cut", project)
        assert "timed out" in hang["last_error"]
        assert all(store.get_schedule(f"cheap-{i:02d}")["consecutive_errors"] == 0 for i in range(CHEAP))
    finally:
        store.dispose()


def test_in_a_batch_a_failing_trigger_counts_its_own_errors_and_a_disabled_one_is_not_polled(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    project = _project(launch, redis_url, tmp_path, "failing")
    worker = project.worker(concurrency=2)
    worker.wait_for_log("ready", timeout=60)
    store = SqlStore(create_engine(f"sqlite:///{tmp_path / 'store.db'}"))
    try:
        store.set_enabled("cheap-03", False)
        project.beat()
        wait_until(lambda: store.get_schedule("failing")["consecutive_errors"] >= 3, 40,
                   "three failed polls", project)
        enabled = [f"cheap-{i:02d}" for i in range(CHEAP) if i != 3]
        wait_until(lambda: all(len(_evals(redis_client, name)) >= 3 for name in enabled),
                   20, "three polls of every enabled cheap trigger", project)

        failing = store.get_schedule("failing")
        assert "failing on purpose" in failing["last_error"]
        for i in range(CHEAP):
            assert store.get_schedule(f"cheap-{i:02d}")["consecutive_errors"] == 0
        assert _evals(redis_client, "cheap-03") == []
        assert {task for _, task in _evals(redis_client, "failing")} == {"cloaca.poll_batch"}
        batched = {task for i in range(CHEAP) for _, task in _evals(redis_client, f"cheap-{i:02d}")}
        assert "cloaca.poll_batch" in batched

        store.set_enabled("cheap-03", True)  # polled again, in a batch, from its next slot
        wait_until(lambda: len(_evals(redis_client, "cheap-03")) >= 2, 20, "cheap-03 polled again", project)
    finally:
        store.dispose()
