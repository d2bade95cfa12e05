"""What worker and beat say at start-up: one line naming what they loaded, or why they refuse.

A trigger naming an unregistered workflow stops them with one clear message;
no trigger at all is a warning that says where triggers are found.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import CeleryProject, app_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_unknown_workflow_refuses_to_start(
    role: str, launch: Callable[..., CeleryProject], redis_url: str, store_url: str
) -> None:
    project = launch("e2e_orphan", **app_env(redis_url, store_url))
    proc = project.worker() if role == "worker" else project.beat()
    code = proc.wait_exit(timeout=60)
    log = proc.log()
    assert code != 0, log
    assert "trigger 'orphan'" in log and "workflow 'no_such_workflow'" in log, log
    assert f"cloaca: {role} not started" in log, log
    assert "ready" not in log.split("cloaca:")[0] or role == "beat"


def test_worker_and_beat_each_log_one_ready_line_after_logging_is_set_up(
    launch: Callable[..., CeleryProject], redis_url: str, store_url: str
) -> None:
    project = launch("e2e_app", **app_env(redis_url, store_url, "every_500ms,every_100ms"))
    worker = project.worker()
    beat = project.beat()
    worker.wait_for_log("ready.", timeout=60)  # Celery's own line: logging is set up by then
    worker.wait_for_log("cloaca: worker ready", timeout=30)
    beat.wait_for_log("cloaca: beat ready", timeout=60)
    store = f"store {store_url}"
    for proc, role in ((worker, "worker"), (beat, "beat")):
        lines = [line for line in proc.log().splitlines() if "cloaca: " + role in line]
        assert len(lines) == 1, lines
        assert "INFO" in lines[0] and "ready: 2 trigger(s)" in lines[0] and "workflow(s)" in lines[0], lines
        assert store in lines[0], lines


def test_no_triggers_is_a_warning_that_says_where_triggers_are_found(
    launch: Callable[..., CeleryProject], redis_url: str, store_url: str
) -> None:
    project = launch("e2e_empty", **app_env(redis_url, store_url))
    worker = project.worker("-B")
    worker.wait_for_log("cloaca: worker ready", timeout=60)
    worker.wait_for_log("cloaca: beat ready", timeout=60)
    for role in ("worker", "beat"):
        line = next(x for x in worker.log().splitlines() if f"cloaca: {role} ready" in x)
        assert "WARNING" in line and "no triggers were found" in line, line
        assert "triggers.py" in line and "-A names" in line, line
