"""How the sweep judges an execution past its deadline (the pure decision; the stores' side is
in the contract suite, the whole with real processes in tests/e2e/test_liveness.py)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import states

from cloaca_celery.settings import resolve_settings
from cloaca_celery.sweep import verdict

SETTINGS = resolve_settings({}, {"heartbeat_interval": "1s", "heartbeat_misses": 2, "queued_timeout": "1m"})


def execution(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"execution_id": "e", "task_ids": ["e-1", "e-2", "e"], "deadline_at": 100.0, "steps": steps,
            "ending_status": None, "error": None, **extra}


RUNNING = [{"task_id": "e-1", "state": "running"}]


@pytest.mark.parametrize(("metas", "expected"), [
    ({"e-1": {"status": states.FAILURE, "result": "boom"}}, "failed"),
    ({"e-2": {"status": states.REVOKED}}, "revoked"),
    ({"e-1": {"status": states.SUCCESS}, "e-2": {"status": states.SUCCESS}, "e": {"status": states.SUCCESS}},
     "succeeded"),
])
def test_the_result_backend_says_how_it_ended_when_its_report_was_lost(
    metas: dict[str, Any], expected: str
) -> None:
    assert verdict(execution(RUNNING), metas, 110.0, SETTINGS)[0] == expected


def test_a_step_whose_lease_ran_out_is_lost_naming_its_worker() -> None:
    metas = {"e-1": {"status": states.STARTED, "result": {"hostname": "w1@box", "pid": 7}}}
    status, error = verdict(execution(RUNNING), metas, 103.0, SETTINGS)
    assert status == "lost"
    assert "step e-1 was running on worker w1@box and its lease ran out 3s ago" in (error or "")


def test_no_step_for_the_queued_timeout_is_lost_saying_so() -> None:
    status, error = verdict(execution([]), {}, 100.0, SETTINGS)
    assert status == "lost" and "cloaca_queued_timeout" in (error or "")


def test_an_ending_execution_ends_with_the_status_it_asked_for() -> None:
    ending = execution(RUNNING, ending_status="failed", error="task e-2 failed: RuntimeError: x")
    assert verdict(ending, {}, 105.0, SETTINGS) == ("failed", "task e-2 failed: RuntimeError: x")
