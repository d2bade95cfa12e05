"""Issue 7, case 6: bad input, one row each, with the clear error it gets.

Each row names the input, the error it must raise and words its message must
hold: the trigger, workflow or setting at fault, and what to do. Where input is
refused while polling, the store must hold no execution row and no claim for it.
The CLI rows run the real ``celery -A ... cloaca`` command (fixture ``cli`` of
tests/cliapp); the start-up rows call the same check a worker runs in
``worker_init`` (a real worker refusing to start is tests/e2e/test_startup.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

import cloaca_celery as cloaca
from cloaca_celery import Context, DefaultRunner, TriggerResult, WorkflowBuilder
from cloaca_celery.errors import ConfigurationError
from cloaca_celery.installation import Installation, get_installation
from cloaca_celery.sqlstore import SqlStore, claims, executions
from cloaca_celery.triggers import triggers
from tests.cliapp.test_cli import cli  # noqa: F401 - the real CLI, as a fixture
from tests.services import POSTGRES_URL, need_postgres


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _step() -> Callable[[Context], Context]:
    """A fresh step function (Celery makes tasks of named functions, not lambdas)."""

    def step(context: Context) -> Context:
        return context

    return step


# -- declaring triggers and workflows ---------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "error"),
    [("abc", ValueError), ("0s", ValueError), ("-1s", ValueError), (0, ValueError),
     (-5, ValueError), ("5 parsecs", ValueError), (True, (TypeError, ValueError)),
     ("", ValueError), (None, (TypeError, ValueError))],
    ids=["abc", "zero-string", "negative-string", "zero", "negative", "unknown-unit", "bool", "empty",
         "none"],
)
def test_a_bad_poll_interval_is_refused_naming_the_trigger_and_keeps_nothing(
    interval: object, error: Any
) -> None:
    name = _unique("bad_interval")
    with pytest.raises(error) as info:
        cloaca.trigger(workflow="wf", name=name, poll_interval=interval)(lambda: False)  # type: ignore[arg-type]
    message = str(info.value)
    assert name in message and "poll_interval" in message
    assert name not in triggers


def test_a_duplicate_trigger_name_is_refused_naming_it() -> None:
    name = _unique("twice")

    def first() -> bool:
        return False

    def second() -> bool:
        return True

    cloaca.trigger(workflow="wf", name=name)(first)
    with pytest.raises(ValueError, match=name) as info:
        cloaca.trigger(workflow="wf", name=name)(second)
    assert "first" in str(info.value) and "name=" in str(info.value)
    assert triggers.get(name).function is first


def test_cyclic_dependencies_are_refused_naming_the_workflow_and_the_cycle() -> None:
    a, b = _unique("cyc_a"), _unique("cyc_b")
    task_a = cloaca.task(id=a, name=f"faults.{a}", dependencies=[b])(_step())
    task_b = cloaca.task(id=b, name=f"faults.{b}", dependencies=[a])(_step())
    workflow = _unique("loop")
    with pytest.raises(ValueError) as info:
        WorkflowBuilder(workflow).add_task(task_a).add_task(task_b).build()
    assert workflow in str(info.value) and a in str(info.value) and b in str(info.value)


def test_a_missing_dependency_is_refused_naming_the_workflow_and_the_task() -> None:
    step = _unique("needs")
    needs = cloaca.task(id=step, name=f"faults.{step}", dependencies=["never_added"])(_step())
    workflow = _unique("incomplete")
    with pytest.raises(ValueError) as info:
        WorkflowBuilder(workflow).add_task(needs).build()
    assert workflow in str(info.value) and "never_added" in str(info.value) and step in str(info.value)


# -- start-up --------------------------------------------------------------------------


def _app(tmp_path: Path, **conf: Any) -> Installation:
    app = Celery(_unique("app"), broker="memory://", set_as_current=False)
    app.conf.update(conf)
    cloaca.install(app, database_url=f"sqlite:///{tmp_path / 'store.db'}", embedded=False)
    return get_installation(app)


@pytest.mark.parametrize(
    ("conf", "needle"),
    [({"task_serializer": "pickle"}, "task_serializer"),
     ({"accept_content": ["json", "pickle"]}, "accept_content"),
     ({"result_serializer": "yaml"}, "result_serializer")],
    ids=["pickle-tasks", "pickle-accepted", "yaml-results"],
)
def test_a_non_json_serializer_is_refused_at_start_up(
    tmp_path: Path, conf: dict[str, Any], needle: str
) -> None:
    installation = _app(tmp_path, **conf)
    problems = installation.check()
    assert len(problems) == 1 and needle in problems[0] and "json" in problems[0]
    with pytest.raises(SystemExit, match="worker not started"):
        installation.start("worker")


def test_an_unknown_workflow_is_refused_at_start_up_naming_trigger_and_workflow(tmp_path: Path) -> None:
    name, workflow = _unique("orphan"), _unique("nowhere")
    cloaca.trigger(workflow=workflow, name=name, poll_interval="1s")(lambda: False)
    problems = _app(tmp_path).check()
    assert any(f"trigger {name!r}" in p and f"workflow {workflow!r}" in p for p in problems), problems


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_context_bytes", 0), ("max_context_bytes", "lots"), ("poll_time_limit", "-3s"),
     ("claim_ttl", "forever"), ("database_url", "not a url")],
)
def test_a_bad_setting_is_refused_naming_it(tmp_path: Path, option: str, value: object) -> None:
    app = Celery(_unique("bad"), broker="memory://", set_as_current=False)
    with pytest.raises(ConfigurationError) as info:
        cloaca.install(app, embedded=False, **{option: value})
        get_installation(app).store.ensure_schema()
    assert option in str(info.value) or "database URL" in str(info.value)


# -- polling: refused input leaves nothing behind --------------------------------------


@pytest.fixture
def polling(tmp_path: Path) -> Iterator[Callable[..., Installation]]:
    apps: list[Celery] = []

    def make(**options: Any) -> Installation:
        app = Celery(_unique("poll"), set_as_current=False)
        app.conf.update(task_always_eager=True, task_eager_propagates=True)
        url = f"sqlite:///{tmp_path / f'p{len(apps)}.db'}"
        cloaca.install(app, database_url=url, embedded=False, **options)
        apps.append(app)
        return get_installation(app)

    yield make
    for app in apps:
        get_installation(app).store.close()


def _nothing_written(installation: Installation, name: str) -> None:
    store = installation.store
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        assert conn.execute(select(executions).where(executions.c.trigger_name == name)).all() == []
        assert conn.execute(select(claims).where(claims.c.trigger_name == name)).all() == []


def _recorder_workflow() -> str:
    name = _unique("sink")
    step = cloaca.task(id=_unique("step"), name=_unique("faults.sink"))(_step())
    with WorkflowBuilder(name) as builder:
        builder.add_task(step)
    return name


@pytest.mark.parametrize(
    ("limit", "size", "needle"),
    [(None, 1024 * 1024 + 1, "1048576"), (2048, 4096, "2048")],
    ids=["default-1MiB", "configured-2KiB"],
)
def test_a_context_over_the_size_limit_is_an_error_and_enqueues_nothing(
    polling: Callable[..., Installation], limit: int | None, size: int, needle: str,
) -> None:
    installation = polling(**({} if limit is None else {"max_context_bytes": limit}))
    name = _unique("bulky")
    cloaca.trigger(workflow=_recorder_workflow(), name=name)(
        lambda: TriggerResult.fire(Context({"blob": "x" * size}))
    )
    report = installation.poller().poll(name)
    assert report.status == "error"
    assert name in report.detail and needle in report.detail and "max_context_bytes" in report.detail
    row = installation.store.get_schedule(name)
    assert row["consecutive_errors"] == 1 and "max_context_bytes" in row["last_error"]
    _nothing_written(installation, name)


@pytest.mark.parametrize(
    ("result", "needle"),
    [(lambda: 42, "returned int"), (lambda: "yes", "returned str"),
     (lambda: TriggerResult.fire({"when": object()}), "when")],
    ids=["int", "str", "unserializable-context"],
)
def test_a_wrong_result_is_an_error_naming_the_trigger_and_enqueues_nothing(
    polling: Callable[..., Installation], result: Callable[[], Any], needle: str,
) -> None:
    installation = polling()
    name = _unique("wrong")
    cloaca.trigger(workflow=_recorder_workflow(), name=name, allow_concurrent=True)(result)
    report = installation.poller().poll(name)
    assert report.status == "error" and needle in report.detail
    assert installation.store.get_schedule(name)["consecutive_errors"] == 1
    _nothing_written(installation, name)


def test_a_fire_for_an_unknown_workflow_is_an_error_and_leaves_no_claim(
    polling: Callable[..., Installation],
) -> None:
    installation = polling()
    name, workflow = _unique("lost"), _unique("never_registered")
    cloaca.trigger(workflow=workflow, name=name)(lambda: True)
    report = installation.poller().poll(name)
    assert report.status == "error" and workflow in report.detail
    _nothing_written(installation, name)


# -- unknown names in the runner, the CLI and the admin --------------------------------


def test_an_unknown_trigger_in_the_runner_is_a_key_error_naming_it(tmp_path: Path) -> None:
    runner = DefaultRunner(f"sqlite:///{tmp_path / 'runner.db'}")
    for call in (lambda: runner.get_trigger_schedule("ghost_trigger"),
                 lambda: runner.set_trigger_enabled("ghost_trigger", False),
                 lambda: runner.execute("ghost_workflow")):
        with pytest.raises(KeyError) as info:
            call()
        assert "ghost_" in str(info.value)


@pytest.mark.parametrize("command", [["enable"], ["disable"], ["poll"], ["history"]])
def test_an_unknown_trigger_in_the_cli_is_one_line_naming_it(cli: Any, command: list[str]) -> None:  # noqa: F811
    done = cli(*command, "ghost_trigger")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any("ghost_trigger" in line for line in lines), done.stderr


# -- names and contexts with SQL metacharacters and unicode ----------------------------


AWKWARD = [
    "'; DROP TABLE cloaca_schedules; --",
    "Robert'); DELETE FROM cloaca_executions; --",
    "%s %(name)s \\ \" `",
    "émoji 🚀 ünïcödé",
    "שלום עולם",
    "名前",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def awkward_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'awkward.db'}"
        return
    need_postgres()
    from sqlalchemy import create_engine, text

    schema = _unique("faults_awkward")
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_awkward_names_and_contexts_round_trip_unchanged(awkward_url: str) -> None:
    workflow = _recorder_workflow()
    names = [f"{text} {uuid.uuid4().hex[:4]}" for text in AWKWARD]
    for name, text in zip(names, AWKWARD, strict=True):
        cloaca.trigger(workflow=workflow, name=name, allow_concurrent=True)(
            lambda text=text: TriggerResult.fire(Context({"text": text, "nested": {text: [text]}}))
        )
    app = Celery(_unique("awkward"), set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    cloaca.install(app, database_url=awkward_url, embedded=False)
    installation = get_installation(app)
    try:
        runner = DefaultRunner(store=installation.store)
        for name in names:
            assert runner.get_trigger_schedule(name)["trigger_name"] == name
            assert installation.poller().poll(name).status == "fired"
        assert set(names) <= {row["trigger_name"] for row in runner.list_trigger_schedules()}
        for name, text in zip(names, AWKWARD, strict=True):
            [row] = runner.get_trigger_execution_history(name)
            assert row["context"] == {"text": text, "nested": {text: [text]}}
            assert row["status"] == "succeeded"
            runner.set_trigger_enabled(name, False)
            assert runner.get_trigger_schedule(name)["enabled"] is False
    finally:
        installation.store.close()
