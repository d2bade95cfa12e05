"""preview_trigger: one evaluation without firing, against a SQLite store; and the cloaca.preview task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import cloaca_celery
from cloaca_celery import TriggerResult, WorkflowBuilder, task, trigger
from cloaca_celery.context import context_hash
from cloaca_celery.installation import get_installation
from cloaca_celery.preview import Preview, preview_trigger
from cloaca_celery.sqlstore import SqlStore, claims, pending
from cloaca_celery.store import NewExecution
from cloaca_celery.triggers import triggers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'preview.db'}")
    s.ensure_schema()
    yield s
    s.close()


@pytest.fixture
def workflow() -> str:
    @task(id="step", name=f"unit.preview.step.{uuid.uuid4().hex}")
    def step(context: Any) -> None:
        return None

    with WorkflowBuilder("wf") as builder:
        builder.add_task(step)
    return "wf"


def _written(store: SqlStore) -> tuple[Any, ...]:
    with store.engine.connect() as conn:
        rows = (conn.execute(claims.select()).all(), conn.execute(pending.select()).all())
    schedules = store.list_schedules()
    return (schedules, *rows, [store.execution_history(s["trigger_name"]) for s in schedules])


def _active(store: SqlStore, name: str, context: dict[str, Any], work: str) -> str:
    execution_id = str(uuid.uuid4())
    now = store.now()
    store.record_fire(NewExecution(execution_id, name, "wf", context, context_hash(context), [execution_id],
                                   datetime.now(timezone.utc), work), claim=True, now=now, deadline=now + 600)
    return execution_id


def test_a_fire_says_what_a_poll_would_do_with_it_by_policy(store: SqlStore, workflow: str) -> None:
    @trigger(workflow=workflow, name="orders", overlap="buffer_one", dedup_key=["order"])
    def orders(state: dict[str, Any]) -> TriggerResult:
        state["seen"] = state.get("seen", 0) + 1  # changed here, never saved
        return TriggerResult.fire({"order": 7, "at": time.time()})

    @trigger(workflow=workflow, name="anything", allow_concurrent=True)
    def anything() -> TriggerResult:
        return TriggerResult.fire({"order": 7})

    store.sync_triggers([d.spec() for d in triggers], time.time(), prune=False)
    free = preview_trigger("orders", store)
    assert (free.result, free.context["order"], free.held_by, free.enabled) == ("fire", 7, None, True)
    assert free.reason == "a poll now would start workflow 'wf'"
    assert free.dedup_hash == triggers.get("orders").dedup_hash({"order": 7})

    holder = _active(store, "orders", {"order": 7, "at": 0}, free.dedup_hash or "")
    _active(store, "anything", {"order": 7}, context_hash({"order": 7}))
    held = preview_trigger("orders", store)
    assert held.held_by == holder
    assert held.reason == (
        f"a poll now would not start it yet: active execution {holder} holds the same work, so "
        "overlap='buffer_one' would have it kept pending (the latest one) until it ends"
    )
    assert preview_trigger("anything", store).held_by is None  # overlap='allow' holds nothing
    store.set_enabled("orders", False)
    before = _written(store)
    off = preview_trigger("orders", store)
    assert "(the trigger is disabled: no scheduled poll runs it now)" in (off.reason or "")
    assert _written(store) == before
    assert store.get_schedule("orders")["state"] == {}


def test_errors_are_the_previews_answer(store: SqlStore, workflow: str) -> None:
    @trigger(workflow=workflow, name="wrong_type")
    def wrong_type() -> Any:
        return "yes"

    @trigger(workflow=workflow, name="keyless", dedup_key=["order"])
    def keyless() -> TriggerResult:
        return TriggerResult.fire({"customer": 1})

    assert "returned str" in (preview_trigger("wrong_type", store).error or "")
    assert "dedup_key field(s) 'order' missing" in (preview_trigger("keyless", store).error or "")
    unknown = preview_trigger("ghost", store, worker="w1@host")
    assert unknown.result == "error" and "unknown trigger 'ghost'" in (unknown.error or "")
    assert "(in worker w1@host)" in (unknown.error or "")
    assert preview_trigger("keyless", None).enabled is None  # no store: nothing read, nothing known


def test_the_preview_task_returns_the_same_dict(tmp_path: Path, workflow: str) -> None:
    @trigger(workflow=workflow, name="ready")
    def ready() -> TriggerResult:
        return TriggerResult.fire({"ok": True})

    app = Celery("t", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    cloaca_celery.install(app, database_url=f"sqlite:///{tmp_path / 'task.db'}", embedded=False)
    try:
        from cloaca_celery.builtin_tasks import send_preview

        answer = Preview.from_dict(send_preview(app, "ready").get(timeout=10))
        assert (answer.result, answer.context) == ("fire", {"ok": True})
        assert get_installation(app).store.execution_history("ready") == []
    finally:
        get_installation(app).store.close()
        app.close()
