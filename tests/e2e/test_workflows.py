"""A fire enqueues its workflow as a Celery canvas, run by real worker processes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.e2e.harness import CeleryProject, app_env, records, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def running(launch: Callable[..., CeleryProject], redis_url: str, store_url: str) -> CeleryProject:
    triggers = "fire_linear,fire_dag,fire_plain,fire_factory"
    project = launch("e2e_app", **app_env(redis_url, store_url, triggers))
    project.worker(concurrency=4).wait_for_log("ready", timeout=30)
    project.beat()
    return project


def _check_fire_metadata(context: dict[str, Any], trigger: str) -> None:
    assert context["trigger_name"] == trigger
    triggered = datetime.fromisoformat(context["triggered_at"])
    assert triggered.tzinfo is not None and triggered.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - triggered).total_seconds()) < 60
    assert len(context["execution_id"]) == 36


def test_linear_workflow_gets_the_fired_context_and_passes_it_along(
    running: CeleryProject, redis_client: Any
) -> None:
    redis_client.rpush("inbox:linear", "order-1")
    done = wait_until(lambda: records(redis_client, "wf:linear:done"), 30, "linear workflow", running)
    first = records(redis_client, "wf:linear:first")[0]
    assert first["item"] == "order-1" and first["total"] == 10
    _check_fire_metadata(first, "fire_linear")
    assert done[0]["trail"] == ["first", "second"]
    assert done[0]["execution_id"] == first["execution_id"]


def test_dag_runs_branches_in_parallel_and_joins_their_contexts(
    running: CeleryProject, redis_client: Any
) -> None:
    redis_client.rpush("inbox:dag", "batch-7")
    joined = wait_until(lambda: records(redis_client, "wf:dag:join"), 30, "dag join", running)[0]
    branches = records(redis_client, "wf:dag:branch")
    assert sorted(b["branch"] for b in branches) == ["left", "right"]
    # Both branches started before either could have finished (each sleeps 1 s).
    assert abs(branches[0]["t"] - branches[1]["t"]) < 1.0
    assert joined["left"] == "L" and joined["right"] == "R" and joined["item"] == "batch-7"
    assert joined["t"] >= max(b["t"] for b in branches) + 1.0
    _check_fire_metadata(joined, "fire_dag")


def test_register_workflow_chain_of_plain_celery_tasks(running: CeleryProject, redis_client: Any) -> None:
    redis_client.rpush("inbox:plain", "p")
    record = wait_until(lambda: records(redis_client, "wf:plain"), 30, "plain chain", running)[0]
    assert record["total"] == 15  # 10 from the trigger, +2, +3 by the chain's tasks
    assert record["item"] == "p"
    _check_fire_metadata(record, "fire_plain")


def test_register_workflow_factory(running: CeleryProject, redis_client: Any) -> None:
    redis_client.rpush("inbox:factory", "f")
    record = wait_until(lambda: records(redis_client, "wf:plain"), 30, "factory workflow", running)[0]
    assert record["via"] == "factory" and record["item"] == "f"
    _check_fire_metadata(record, "fire_factory")
