"""``DefaultRunner``: database URLs, trigger management, history, pruning, and eager ``execute``.

SQLite throughout, plus PostgreSQL for the normalization of a bare
``postgresql://`` URL. Triggers are defined in the tests with
``@cloaca_celery.trigger``; the autouse fixture of tests/conftest.py restores
the registries afterwards.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

import cloaca_celery
from cloaca_celery import Context, DefaultRunner, TriggerResult, WorkflowBuilder
from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import NewExecution, TriggerSpec
from tests.support.services import POSTGRES_URL

UTC = timezone.utc


def define_triggers() -> None:
    """Two triggers of this test module (a fresh definition each test; the registry is restored)."""

    @cloaca_celery.trigger("contract_ship", name="contract_orders", poll_interval="5s")
    def contract_orders() -> TriggerResult:
        return TriggerResult.skip()

    @cloaca_celery.trigger(
        "contract_ingest", name="contract_files", poll_interval="100ms", allow_concurrent=True
    )
    def contract_files() -> bool:
        return False


def record(runner: DefaultRunner, trigger: str, started_at: datetime, n: int) -> str:
    execution_id = str(uuid.uuid4())
    assert runner.store.record_fire(
        NewExecution(
            execution_id=execution_id, trigger_name=trigger, workflow="contract_ship",
            context={"n": n}, context_hash=f"{n:064d}", task_ids=[execution_id], started_at=started_at,
        ),
        claim=False, now=started_at.timestamp(), deadline=started_at.timestamp() + 600,
    )
    return execution_id


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    define_triggers()
    made = DefaultRunner(f"sqlite:///{tmp_path / 'runner.db'}")
    yield made
    made.store.close()


# -- URLs -----------------------------------------------------------------------------------


def test_cloaca_style_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    define_triggers()
    first = DefaultRunner("sqlite://rel.db")
    try:
        assert (tmp_path / "rel.db").is_file()
        first.set_trigger_enabled("contract_orders", False)
    finally:
        first.store.close()
    again = DefaultRunner(f"sqlite:///{tmp_path / 'rel.db'}")
    try:
        assert again.get_trigger_schedule("contract_orders")["enabled"] is False
    finally:
        again.store.close()


def test_cloaca_style_memory_url() -> None:
    define_triggers()
    memory = DefaultRunner("sqlite://:memory:")
    try:
        assert memory.get_trigger_schedule("contract_orders")["enabled"] is True
        memory.set_trigger_enabled("contract_orders", False)
        assert memory.get_trigger_schedule("contract_orders")["enabled"] is False  # one database, kept
    finally:
        memory.store.close()


def test_sqlalchemy_absolute_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = tmp_path / "data" / "abs.db"
    define_triggers()
    absolute = DefaultRunner(f"sqlite:///{path}")
    try:
        assert path.is_file()
        assert list(elsewhere.iterdir()) == []
        names = {s["trigger_name"] for s in absolute.list_trigger_schedules()}
        assert {"contract_orders", "contract_files"} <= names
    finally:
        absolute.store.close()


def test_bare_postgresql_url_uses_psycopg(pg_schema: str) -> None:
    base = make_url(POSTGRES_URL)
    url = (
        f"postgresql://{base.username}@{base.host}:{base.port}/{base.database}"
        f"?options=-csearch_path%3D{pg_schema}"
    )
    define_triggers()
    pg = DefaultRunner(url)
    assert isinstance(pg.store, SqlStore)
    try:
        assert pg.store.engine.dialect.name == "postgresql"
        assert pg.store.engine.dialect.driver == "psycopg"
        assert "contract_orders" in {s["trigger_name"] for s in pg.list_trigger_schedules()}
        pg.set_trigger_enabled("contract_orders", False)
        assert pg.get_trigger_schedule("contract_orders")["enabled"] is False
        assert "cloaca_schedules" in inspect(pg.store.engine).get_table_names(schema=pg_schema)
        with pg.store.engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar() == pg_schema
    finally:
        pg.store.close()


# -- triggers ---------------------------------------------------------------------------------


def test_triggers_get_schedule_rows_when_the_runner_is_created(runner: DefaultRunner) -> None:
    schedules = {s["trigger_name"]: s for s in runner.list_trigger_schedules()}
    orders, files = schedules["contract_orders"], schedules["contract_files"]
    assert (orders["workflow"], orders["poll_interval"]) == ("contract_ship", 5.0)
    assert (files["workflow"], files["poll_interval"]) == ("contract_ingest", 0.1)
    assert (orders["allow_concurrent"], files["allow_concurrent"]) == (False, True)
    assert orders["enabled"] is files["enabled"] is True
    assert runner.get_trigger_schedule("contract_orders") == orders
    names = [s["trigger_name"] for s in runner.list_trigger_schedules()]
    assert names == sorted(names)


def test_set_trigger_enabled(runner: DefaultRunner) -> None:
    runner.set_trigger_enabled("contract_orders", False)
    assert runner.get_trigger_schedule("contract_orders")["enabled"] is False
    assert runner.get_trigger_schedule("contract_files")["enabled"] is True
    runner.set_trigger_enabled("contract_orders", True)
    assert runner.get_trigger_schedule("contract_orders")["enabled"] is True
    runner.set_trigger_enabled("contract_orders", False, note="quarter close", by="finance-ops")
    paused = runner.get_trigger_schedule("contract_orders")
    assert (paused["pause_note"], paused["paused_by"]) == ("quarter close", "finance-ops")
    assert runner.get_trigger_schedule("contract_files")["paused_at"] is None


def test_a_new_runner_keeps_the_operators_choice(tmp_path: Path) -> None:
    define_triggers()
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    first = DefaultRunner(url)
    first.set_trigger_enabled("contract_orders", False)
    first.store.close()
    second = DefaultRunner(url)
    try:
        assert second.get_trigger_schedule("contract_orders")["enabled"] is False
    finally:
        second.store.close()


def test_the_runner_does_not_prune_other_triggers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    other = SqlStore(url)
    other.ensure_schema()
    other.sync_triggers([TriggerSpec("defined_elsewhere", "wf", 5.0, False)], 1_764_331_234.5)
    other.close()
    define_triggers()
    made = DefaultRunner(url)
    try:
        assert made.get_trigger_schedule("defined_elsewhere")["registered"] is True
    finally:
        made.store.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.get_trigger_schedule("no_such_trigger"),
        lambda r: r.set_trigger_enabled("no_such_trigger", True),
        lambda r: r.get_trigger_execution_history("no_such_trigger"),
    ],
    ids=["get_trigger_schedule", "set_trigger_enabled", "get_trigger_execution_history"],
)
def test_unknown_trigger_is_a_key_error(runner: DefaultRunner, call: Any) -> None:
    with pytest.raises(KeyError, match="no_such_trigger"):
        call(runner)


# -- history and pruning ------------------------------------------------------------------------


def test_history_is_newest_first_with_limit_and_offset(runner: DefaultRunner) -> None:
    start = datetime(2025, 11, 28, 12, 0, tzinfo=UTC)
    ids = [record(runner, "contract_orders", start + timedelta(seconds=i), i) for i in range(5)]
    record(runner, "contract_files", start + timedelta(seconds=9), 9)
    newest_first = list(reversed(ids))

    history = runner.get_trigger_execution_history("contract_orders")
    assert [e["execution_id"] for e in history] == newest_first
    assert [e["context"] for e in history] == [{"n": i} for i in reversed(range(5))]
    assert history[0]["started_at"] == start + timedelta(seconds=4)
    page = runner.get_trigger_execution_history("contract_orders", limit=2, offset=1)
    assert [e["execution_id"] for e in page] == newest_first[1:3]
    page = runner.get_trigger_execution_history("contract_orders", limit=1)
    assert [e["execution_id"] for e in page] == ids[-1:]
    assert runner.get_trigger_execution_history("contract_orders", offset=5) == []
    assert runner.get_trigger_execution_history("contract_files")[0]["context"] == {"n": 9}


def test_prune_history(runner: DefaultRunner) -> None:
    now = datetime.now(UTC)
    old = record(runner, "contract_orders", now - timedelta(days=45), 1)
    recent = record(runner, "contract_orders", now - timedelta(days=45), 2)
    stuck = record(runner, "contract_orders", now - timedelta(days=90), 3)  # never ended
    runner.store.finish_execution(old, "succeeded", None, now - timedelta(days=40))
    runner.store.finish_execution(recent, "failed", "boom", now - timedelta(days=1))

    assert runner.prune_history("30d") == 1
    left = runner.get_trigger_execution_history("contract_orders")
    assert {e["execution_id"] for e in left} == {recent, stuck}
    assert runner.prune_history(timedelta(days=30)) == 0
    assert runner.prune_history("1h") == 1
    assert [e["execution_id"] for e in runner.get_trigger_execution_history("contract_orders")] == [stuck]


@pytest.mark.parametrize("older_than", [0, -5, "0s", "soon", True])
def test_prune_history_refuses_a_bad_duration(runner: DefaultRunner, older_than: Any) -> None:
    record(runner, "contract_orders", datetime(2025, 1, 1, tzinfo=UTC), 1)
    with pytest.raises(ValueError):
        runner.prune_history(older_than)
    assert len(runner.get_trigger_execution_history("contract_orders")) == 1


# -- execute ---------------------------------------------------------------------------------------


def test_execute_runs_a_workflow_eagerly(runner: DefaultRunner) -> None:
    @cloaca_celery.task()
    def contract_add(context: Context) -> Context:
        context.set("n", context.get("n") + 1)
        context.set("steps", [*context.get("steps", []), "add"])
        return context

    @cloaca_celery.task(dependencies=[contract_add])
    def contract_double(context: Context) -> dict[str, Any]:
        return {**context.to_dict(), "n": context.get("n") * 2, "steps": [*context.get("steps"), "double"]}

    with WorkflowBuilder("contract_arith") as builder:
        builder.add_task(contract_add)
        builder.add_task(contract_double)

    result = runner.execute("contract_arith", {"n": 1, "label": "日本語 'q'"})
    assert result["status"] == "succeeded"
    assert result["error"] is None
    assert result["workflow"] == "contract_arith"
    context = result["context"]
    assert (context["n"], context["steps"], context["label"]) == (4, ["add", "double"], "日本語 'q'")
    assert context["execution_id"] == result["execution_id"]

    again = runner.execute("contract_arith", Context({"n": 10}))
    assert (again["status"], again["context"]["n"]) == ("succeeded", 22)
    assert again["execution_id"] != result["execution_id"]
    assert runner.get_trigger_execution_history("contract_orders") == []  # not trigger history


def test_execute_reports_a_failing_step(runner: DefaultRunner) -> None:
    reached: list[str] = []

    @cloaca_celery.task()
    def contract_prepare(context: Context) -> None:
        reached.append("prepare")

    @cloaca_celery.task(dependencies=[contract_prepare])
    def contract_explode(context: Context) -> None:
        raise RuntimeError(f"cannot ship order {context.get('order')}")

    @cloaca_celery.task(dependencies=[contract_explode])
    def contract_after(context: Context) -> None:
        reached.append("after")

    with WorkflowBuilder("contract_broken") as builder:
        builder.add_task(contract_prepare)
        builder.add_task(contract_explode)
        builder.add_task(contract_after)

    result = runner.execute("contract_broken", {"order": 77})
    assert result["status"] == "failed"
    assert "RuntimeError" in result["error"]
    assert "cannot ship order 77" in result["error"]
    assert result["context"] is None
    assert reached == ["prepare"]


def test_execute_of_an_unknown_workflow_is_a_key_error(runner: DefaultRunner) -> None:
    with pytest.raises(KeyError, match="contract_nowhere"):
        runner.execute("contract_nowhere", {})
