"""Issue 7, case 6: bad input, one table row each, with the clear error it gets.

``BAD_INPUT`` is the table: each row provokes one bad input where a user
would give it (decorator, builder, settings, a real ``celery worker``, a poll,
``DefaultRunner``, the real ``celery -A ... cloaca`` command, the Django
admin) and names the error it must get: its type (an exception class, or
what a process or page answers) and words its message must hold, naming the
trigger, workflow or setting at fault and saying what to do. Rows refused at
poll time also prove that nothing was half-written: no execution row, no
claim, no message published, the poll lease released, and the next poll free
to run (and fail the same way).

Below the table: awkward names and contexts (SQL metacharacters, ``%s``,
backslashes, emoji, right-to-left text, NUL) round-tripping unchanged through
the SQL store on SQLite and PostgreSQL and through the CLI's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from sqlalchemy import select

import cloaca_celery as cloaca
from cloaca_celery import Context, DefaultRunner, TriggerResult, WorkflowBuilder
from cloaca_celery.context import context_hash
from cloaca_celery.errors import (
    ConfigurationError,
    ContextError,
    UnknownTriggerError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
)
from cloaca_celery.installation import Installation, get_installation
from cloaca_celery.sqlstore import SqlStore, claims, executions, schedules
from cloaca_celery.triggers import triggers
from cloaca_celery.workflows import workflows
from tests.cliapp.test_cli import cli  # noqa: F401 - the real CLI, as a fixture
from tests.djangoapp.conftest import store, superuser  # noqa: F401 - admin rows
from tests.support.services import postgres_schema, postgres_url_in

REPO = Path(__file__).resolve().parents[2]
CLI_APP = REPO / "tests" / "cliapp"


@dataclass(frozen=True)
class Refusal:
    """What the user got: an error type (class, or a process/page answer) and its message."""

    error: type[BaseException] | str
    message: str


def _raised(action: Callable[[], object]) -> Refusal:
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - SystemExit is one of the answers looked for
        return Refusal(type(exc), str(exc))
    raise AssertionError("the bad input was accepted")


def _step() -> Callable[[Context], Context]:
    """A fresh step function (Celery makes tasks of named functions, not lambdas)."""

    def step(context: Context) -> Context:
        return context

    return step


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _new_task(task_id: str, dependencies: tuple[str, ...] = ()) -> Any:
    return cloaca.task(id=task_id, name=_unique(f"faults.{task_id}"), dependencies=dependencies)(_step())


def _workflow(name: str | None = None) -> str:
    """A registered one-step workflow; returns its name."""
    name = name or _unique("sink")
    with WorkflowBuilder(name) as builder:
        builder.add_task(_new_task(_unique("step")))
    return name


# -- the lab: what a row needs ------------------------------------------------------------


BAD_APP = '''
"""Written by tests/faults/test_bad_input.py: an app whose start-up must be refused."""
import os

from celery import Celery

import cloaca_celery as cloaca

CASE = os.environ["BAD_CASE"]
app = Celery("bad_app", broker="memory://")
if CASE == "pickle-tasks":
    app.conf.task_serializer = "pickle"
elif CASE == "yaml-results":
    app.conf.result_serializer = "yaml"
elif CASE == "pickle-accepted":
    app.conf.accept_content = ["json", "pickle"]
cloaca.install(app, database_url=os.environ["BAD_DATABASE_URL"], embedded=False)


@cloaca.task(id="bad_step")
def bad_step(context):
    return context


with cloaca.WorkflowBuilder("bad_workflow") as builder:
    builder.add_task(bad_step)


@cloaca.trigger(workflow="no_such_workflow" if CASE == "orphan" else "bad_workflow",
                name="bad_trigger", poll_interval="1s")
def bad_trigger():
    return False
'''


@dataclass
class Lab:
    """Per-test helpers for the rows: apps on a SQLite file of the test's own, the CLI, a worker."""

    tmp_path: Path
    request: pytest.FixtureRequest
    installations: list[Installation] = field(default_factory=list)

    # -- apps and polls ------------------------------------------------------------------

    def install(self, **options: Any) -> Installation:
        """A Celery app (memory broker, not eager: a fire publishes) with cloaca installed."""
        app = Celery(_unique("bad"), broker="memory://", set_as_current=False)
        url = f"sqlite:///{self.tmp_path / f'store{len(self.installations)}.db'}"
        cloaca.install(app, database_url=url, embedded=False, **options)
        installation = get_installation(app)
        self.installations.append(installation)
        return installation

    def poll_refused(self, fn: Callable[[], Any], workflow: str | None = None, **options: Any) -> Refusal:
        """Poll a trigger running ``fn`` once; it must be an error that left nothing behind."""
        installation = self.install(**options)
        name = _unique("refused")
        cloaca.trigger(workflow=workflow or _workflow(), name=name, poll_interval="1m")(fn)
        published: list[str] = []
        report = _poll_recording(installation, name, published)
        assert report.status == "error", report
        _nothing_written(installation, name)
        assert published == [], f"a refused fire published {published}"
        row = installation.store.get_schedule(name)
        assert row["consecutive_errors"] == 1 and row["last_error"] == report.detail
        assert row["last_fire_at"] is None
        # The lease is released and no claim blocks: the next poll runs and fails the same way.
        assert _poll_recording(installation, name, published).detail == report.detail
        assert installation.store.get_schedule(name)["consecutive_errors"] == 2
        _nothing_written(installation, name)
        assert published == []
        match = re.match(r"(?:fire failed: )?(\w+): ", report.detail)
        assert match is not None, report.detail
        return Refusal(RECORDED_ERRORS[match.group(1)], report.detail)

    # -- processes ---------------------------------------------------------------------------

    def cli(self, *args: str) -> Refusal:
        """``celery -A cli_proj cloaca ARGS`` (tests/cliapp): it must fail with one line on stderr."""
        done = self.request.getfixturevalue("cli")(*args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert "Traceback" not in done.stderr, done.stderr
        assert len(lines) == 1, done.stderr
        assert done.stdout.strip() == "", done.stdout
        return Refusal(f"exit {done.returncode}", lines[0])

    def worker(self, case: str) -> Refusal:
        """A real ``celery worker`` whose start-up must be refused with one critical line."""
        (self.tmp_path / "bad_app.py").write_text(BAD_APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
        env.update(BAD_CASE=case, BAD_DATABASE_URL=f"sqlite:///{self.tmp_path / 'worker.db'}",
                   PYTHONPATH=os.pathsep.join([str(self.tmp_path), str(REPO)]), PYTHONUNBUFFERED="1",
                   # Celery refuses pickle for root itself; past that, cloaca's check must refuse it.
                   C_FORCE_ROOT="1")
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "bad_app", "worker", "--pool", "solo", "-l", "info",
             "-n", f"{_unique('bad')}@%h", "--without-mingle", "--without-gossip"],
            cwd=self.tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        log = done.stdout + done.stderr
        assert "Traceback" not in log, log
        assert "ready" not in log and "celery@" not in log, f"the worker started:\n{log}"
        problems = [line for line in log.splitlines() if line.startswith("cloaca: ")
                    and not line.startswith("cloaca: worker not started: ")]
        summary = [line for line in log.splitlines() if line.startswith("cloaca: worker not started: ")]
        assert len(problems) == 1 and len(summary) == 1, log
        assert summary[0].endswith(problems[0][len("cloaca: "):]), log
        return Refusal(f"exit {done.returncode}", problems[0])

    # -- the Django admin ------------------------------------------------------------------

    def admin(self, method: str, url: str, data: dict[str, Any] | None = None) -> Refusal:
        """A superuser's admin request; the refusal is the page's answer and the message it shows."""
        from django.test import Client

        client = Client()
        client.force_login(self.request.getfixturevalue("superuser"))
        response = getattr(client, method)(url, data or {})
        assert response.status_code == 302, response
        page = client.get(response["Location"])
        shown = [(m.level_tag, str(m)) for m in page.context["messages"]]
        problems = [(level, text) for level, text in shown if level in ("warning", "error")]
        assert len(problems) == 1, shown
        assert not [text for level, text in shown if level == "success"], shown
        level, message = problems[0]
        return Refusal(f"HTTP 302, {level}", message)

    def close(self) -> None:
        for installation in self.installations:
            installation.store.close()


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(tmp_path, request)
    yield lab
    lab.close()


RECORDED_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls for cls in (ContextError, UnknownWorkflowError, TypeError, ValueError)
}


def _poll_recording(installation: Installation, name: str, published: list[str]) -> Any:
    """One manual poll of ``name``, collecting the task names it publishes."""

    def record(sender: Any = None, **_: Any) -> None:
        published.append(str(sender))

    signals.before_task_publish.connect(record, weak=False)
    try:
        return installation.poller().poll(name)
    finally:
        signals.before_task_publish.disconnect(record)


def _nothing_written(installation: Installation, name: str) -> None:
    """No execution row and no claim for ``name``, and its poll lease is released."""
    sql_store = installation.store
    assert isinstance(sql_store, SqlStore)
    with sql_store.engine.connect() as conn:
        assert conn.execute(select(executions).where(executions.c.trigger_name == name)).all() == []
        assert conn.execute(select(claims).where(claims.c.trigger_name == name)).all() == []
        lease = conn.execute(select(schedules.c.poll_token, schedules.c.poll_lease_until)
                             .where(schedules.c.trigger_name == name)).one()
        assert tuple(lease) == (None, None), lease


# -- how each row provokes its bad input --------------------------------------------------


def _interval(value: object) -> Callable[[Lab], Refusal]:
    def provoke(lab: Lab) -> Refusal:
        refusal = _raised(lambda: cloaca.trigger(workflow="wf", name="bad_interval",
                                                 poll_interval=value)(lambda: False))  # type: ignore[arg-type]
        assert "bad_interval" not in triggers, "a refused trigger was registered"
        return refusal

    return provoke


def _duplicate_trigger(lab: Lab) -> Refusal:
    def first() -> bool:
        return False

    def second() -> bool:
        return True

    cloaca.trigger(workflow="wf", name="dup")(first)
    refusal = _raised(lambda: cloaca.trigger(workflow="wf", name="dup")(second))
    assert triggers.get("dup").function is first, "the second definition replaced the first"
    return refusal


def _bad_name(name: str) -> Callable[[Lab], Refusal]:
    def provoke(lab: Lab) -> Refusal:
        refusal = _raised(lambda: cloaca.trigger(workflow="wf", name=name)(lambda: False))
        assert name not in triggers
        return refusal

    return provoke


def _duplicate_workflow(lab: Lab) -> Refusal:
    _workflow("twice_wf")
    return _raised(lambda: _workflow("twice_wf"))


def _duplicate_task_id(lab: Lab) -> Refusal:
    def load(context: Context) -> None:
        return None

    def save(context: Context) -> None:
        return None

    cloaca.task(id="twice_step", name=_unique("faults.load"))(load)
    return _raised(lambda: cloaca.task(id="twice_step", name=_unique("faults.save"))(save))


def _cycle(lab: Lab) -> Refusal:
    a, b, c = _new_task("cyc_a", ("cyc_c",)), _new_task("cyc_b", ("cyc_a",)), _new_task("cyc_c", ("cyc_b",))
    refusal = _raised(lambda: WorkflowBuilder("loop_wf").add_task(a).add_task(b).add_task(c).build())
    assert "loop_wf" not in workflows.names()
    return refusal


def _self_dependency(lab: Lab) -> Refusal:
    me = _new_task("myself", ("myself",))
    return _raised(lambda: WorkflowBuilder("selfish_wf").add_task(me).build())


def _missing_dependency(lab: Lab) -> Refusal:
    needs = _new_task("needs", ("never_added",))

    def declare() -> None:
        with WorkflowBuilder("incomplete_wf") as builder:
            builder.add_task(needs)

    refusal = _raised(declare)
    assert "incomplete_wf" not in workflows.names(), "a workflow that failed to build was registered"
    return refusal


def _unknown_step(lab: Lab) -> Refusal:
    return _raised(lambda: WorkflowBuilder("typo_wf").add_task("no_such_step"))


def _setting(option: str, value: object) -> Callable[[Lab], Refusal]:
    def provoke(lab: Lab) -> Refusal:
        app = Celery(_unique("bad"), broker="memory://", set_as_current=False)
        cloaca.install(app, embedded=False, **{option: value})
        return _raised(lambda: get_installation(app).settings)

    return provoke


def _serializer_in_process(**conf: Any) -> Callable[[Lab], Refusal]:
    """The check a worker runs in ``worker_init``, called here: it must stop start-up."""

    def provoke(lab: Lab) -> Refusal:
        installation = lab.install()
        installation.app.conf.update(conf)
        problems = installation.check()
        assert len(problems) == 1, problems
        refusal = _raised(lambda: installation.start("worker"))
        assert problems[0] in refusal.message
        return refusal

    return provoke


def _orphan_in_process(lab: Lab) -> Refusal:
    cloaca.trigger(workflow="nowhere_wf", name="orphan", poll_interval="1s")(lambda: False)
    installation = lab.install()
    return _raised(lambda: installation.start("beat"))


def _too_big(size: int, **options: Any) -> Callable[[Lab], Refusal]:
    return lambda lab: lab.poll_refused(lambda: TriggerResult.fire({"blob": "x" * size}), **options)


def _returns(value: Callable[[], Any]) -> Callable[[Lab], Refusal]:
    return lambda lab: lab.poll_refused(value)


def _unknown_workflow_at_poll(lab: Lab) -> Refusal:
    _workflow("some_other_wf")
    return lab.poll_refused(lambda: True, workflow="never_registered_wf")


def _runner(call: Callable[[DefaultRunner], object]) -> Callable[[Lab], Refusal]:
    def provoke(lab: Lab) -> Refusal:
        runner = DefaultRunner(f"sqlite:///{lab.tmp_path / 'runner.db'}")
        try:
            refusal = _raised(lambda: call(runner))
            names = [row["trigger_name"] for row in runner.list_trigger_schedules()]
            assert "ghost_trigger" not in names, "a refused name got a schedule row"
            return refusal
        finally:
            runner.store.close()

    return provoke


def _admin_missing_row(action: str) -> Callable[[Lab], Refusal]:
    def provoke(lab: Lab) -> Refusal:
        from django.urls import reverse

        from django_cloaca.models import TriggerSchedule

        lab.request.getfixturevalue("store")
        before = list(TriggerSchedule.objects.order_by("pk").values())
        refusal = lab.admin("post", reverse("admin:django_cloaca_triggerschedule_changelist"),
                            {"action": action, "_selected_action": ["ghost_trigger"]})
        assert list(TriggerSchedule.objects.order_by("pk").values()) == before
        return refusal

    return provoke


def _admin_missing_url(lab: Lab) -> Refusal:
    from django.urls import reverse

    from django_cloaca.models import TriggerSchedule

    lab.request.getfixturevalue("store")
    url = reverse("admin:django_cloaca_triggerschedule_change", args=["ghost_trigger"])
    refusal = lab.admin("post", url, {"enabled": "on"})
    assert not TriggerSchedule.objects.filter(pk="ghost_trigger").exists()
    return refusal


def _admin_poll_not_in_code(lab: Lab) -> Refusal:
    from django.urls import reverse

    from cloaca_celery.store import TriggerSpec
    from django_cloaca.models import TriggerSchedule
    from tests.django_project.celery_app import app

    django_store = lab.request.getfixturevalue("store")
    django_store.sync_triggers([TriggerSpec("retired_trigger", "django_invoices", 5.0, False)],
                               time.time(), prune=False)
    TriggerSchedule.objects.filter(pk="retired_trigger").update(registered=False)
    before = django_store.get_schedule("retired_trigger")
    poll = app.tasks["cloaca.poll"]
    sent: list[object] = []
    lab.request.getfixturevalue("monkeypatch").setattr(poll, "apply_async", lambda *a, **k: sent.append(a))
    refusal = lab.admin("post", reverse("admin:django_cloaca_triggerschedule_changelist"),
                        {"action": "poll_now", "_selected_action": ["retired_trigger"]})
    assert sent == [], "a poll was sent for a trigger no worker defines"
    assert django_store.get_schedule("retired_trigger") == before
    return refusal


@dataclass(frozen=True)
class Bad:
    provoke: Callable[[Lab], Refusal]
    error: type[BaseException] | str
    needles: tuple[str, ...]


def row(case_id: str, provoke: Callable[[Lab], Refusal], error: type[BaseException] | str,
        *needles: str, marks: Any = ()) -> Any:
    return pytest.param(Bad(provoke, error, needles), id=case_id, marks=marks)


INTERVAL = "trigger 'bad_interval': poll_interval: "
FORMAT_HINT = "write a number followed by ms, s, m, h or d"
POSITIVE_HINT = "must be greater than zero"
DJANGO = pytest.mark.django_db
PROCESS = pytest.mark.e2e

BAD_INPUT = [
    # poll intervals, refused at decoration
    row("interval-abc", _interval("abc"), ValueError, INTERVAL + "'abc' is not a duration", FORMAT_HINT),
    row("interval-0s", _interval("0s"), ValueError, INTERVAL + "'0s'", POSITIVE_HINT),
    row("interval-negative-string", _interval("-1s"), ValueError, INTERVAL + "'-1s'", FORMAT_HINT),
    row("interval-zero", _interval(0), ValueError, INTERVAL + "0 ", POSITIVE_HINT),
    row("interval-negative", _interval(-5), ValueError, INTERVAL + "-5 ", POSITIVE_HINT),
    row("interval-unknown-unit", _interval("5 parsecs"), ValueError, INTERVAL + "'5 parsecs'", FORMAT_HINT),
    row("interval-bool", _interval(True), ValueError, INTERVAL + "True is not a duration", "use e.g. '5s'"),
    row("interval-empty", _interval(""), ValueError, INTERVAL + "''", FORMAT_HINT),
    row("interval-none", _interval(None), ValueError, INTERVAL + "None", "use a string such as '5s'"),
    row("interval-infinite", _interval(float("inf")), ValueError, INTERVAL + "inf", "not a finite duration"),
    row("interval-huge-int", _interval(10**400), ValueError, INTERVAL, "too large", "such as '5s'"),
    # names, refused at decoration
    row("duplicate-trigger", _duplicate_trigger, ConfigurationError,
        "trigger 'dup' is already defined by", "first", "second", "Pass a distinct name="),
    row("nul-in-trigger-name", _bad_name("orders\x00x"), ConfigurationError,
        "trigger 'orders\\x00x'", "control character", "rename it"),
    row("newline-in-trigger-name", _bad_name("orders\nx"), ConfigurationError,
        "trigger 'orders\\nx'", "control character", "rename it"),
    row("duplicate-workflow", _duplicate_workflow, ConfigurationError,
        "workflow 'twice_wf' is already registered", "unique name"),
    row("duplicate-task-id", _duplicate_task_id, ConfigurationError,
        "task id 'twice_step' is already used by", "another id with @task(id=...)"),
    # workflows, refused when built
    row("cyclic-dependencies", _cycle, WorkflowDefinitionError,
        "workflow 'loop_wf'", "'cyc_a' -> 'cyc_c' -> 'cyc_b' -> 'cyc_a'", "remove one of the dependencies"),
    row("self-dependency", _self_dependency, WorkflowDefinitionError,
        "workflow 'selfish_wf'", "'myself' -> 'myself'", "cycle"),
    row("missing-dependency", _missing_dependency, WorkflowDefinitionError,
        "workflow 'incomplete_wf': task 'needs' depends on 'never_added'", "add_task('never_added') too"),
    row("unknown-step", _unknown_step, WorkflowDefinitionError,
        "workflow 'typo_wf'", "'no_such_step' is not a known @task id", "decorate the step"),
    # settings, refused when resolved (worker and beat resolve them at start-up)
    row("setting-max-context-bytes-zero", _setting("max_context_bytes", 0), ConfigurationError,
        "setting cloaca_max_context_bytes", "expected a positive integer, got 0"),
    row("setting-max-context-bytes-text", _setting("max_context_bytes", "lots"), ConfigurationError,
        "setting cloaca_max_context_bytes", "got 'lots'"),
    row("setting-poll-time-limit-negative", _setting("poll_time_limit", "-3s"), ConfigurationError,
        "setting cloaca_poll_time_limit", "'-3s'", FORMAT_HINT),
    row("setting-queued-timeout-malformed", _setting("queued_timeout", "forever"), ConfigurationError,
        "setting cloaca_queued_timeout", "'forever'", FORMAT_HINT),
    row("setting-heartbeat-misses-one", _setting("heartbeat_misses", 1), ConfigurationError,
        "setting cloaca_heartbeat_misses", "at least 2", "got 1"),
    row("setting-database-url", _setting("database_url", "not a url"), ConfigurationError,
        "setting cloaca_database_url", "such as 'sqlite:///cloaca.db'"),
    # serializers and unknown workflows, refused at start-up: in process, then by a real worker
    row("pickle-tasks", _serializer_in_process(task_serializer="pickle"), SystemExit,
        "worker not started", "task_serializer='pickle'", "set task_serializer='json'"),
    row("yaml-results", _serializer_in_process(result_serializer="yaml"), SystemExit,
        "worker not started", "result_serializer='yaml'", "set result_serializer='json'"),
    row("pickle-accepted", _serializer_in_process(accept_content=["json", "pickle"]), SystemExit,
        "worker not started", "accepts pickle", "set accept_content=['json']"),
    row("yaml-accepted", _serializer_in_process(accept_content=["yaml"]), SystemExit,
        "worker not started", "accepts yaml", "set accept_content=['json']"),
    row("unknown-workflow-at-start", _orphan_in_process, SystemExit,
        "beat not started", "trigger 'orphan'", "workflow 'nowhere_wf'", "Define it with WorkflowBuilder"),
    row("worker-pickle-tasks", lambda lab: lab.worker("pickle-tasks"), "exit 1",
        "task_serializer='pickle'", "set task_serializer='json'", marks=PROCESS),
    row("worker-yaml-results", lambda lab: lab.worker("yaml-results"), "exit 1",
        "result_serializer='yaml'", "set result_serializer='json'", marks=PROCESS),
    row("worker-pickle-accepted", lambda lab: lab.worker("pickle-accepted"), "exit 1",
        "accepts pickle", "set accept_content=['json']", marks=PROCESS),
    row("worker-unknown-workflow", lambda lab: lab.worker("orphan"), "exit 1",
        "trigger 'bad_trigger'", "workflow 'no_such_workflow'", "registered workflows: 'bad_workflow'",
        "Define it with WorkflowBuilder or register_workflow()", marks=PROCESS),
    # refused at poll time: recorded on the schedule, nothing enqueued, no claim, no execution row
    row("context-over-default-1MiB", _too_big(1024 * 1024), ContextError,
        "trigger 'refused_", "1048587 bytes", "limit of 1048576 (setting cloaca_max_context_bytes)",
        "pass a reference"),
    row("context-over-configured-limit", _too_big(4096, max_context_bytes=2048), ContextError,
        "trigger 'refused_", "4107 bytes", "limit of 2048 (setting cloaca_max_context_bytes)",
        "pass a reference"),
    row("unknown-workflow-at-poll", _unknown_workflow_at_poll, UnknownWorkflowError,
        "fire failed", "unknown workflow 'never_registered_wf'", "registered workflows: ", "'some_other_wf'",
        "Define it with WorkflowBuilder or register_workflow()"),
    row("returns-int", _returns(lambda: 42), TypeError,
        "trigger 'refused_", "returned int", "must return TriggerResult.fire(...), TriggerResult.skip()"),
    row("returns-str", _returns(lambda: "yes"), TypeError, "trigger 'refused_", "returned str"),
    row("returns-none", _returns(lambda: None), TypeError, "trigger 'refused_", "returned NoneType"),
    row("unserializable-context", _returns(lambda: TriggerResult.fire({"when": object()})), ContextError,
        "context key 'when'", "type object cannot be stored as JSON", "convert it"),
    # unknown names in DefaultRunner
    row("runner-get-schedule", _runner(lambda r: r.get_trigger_schedule("ghost_trigger")),
        UnknownTriggerError, "unknown trigger 'ghost_trigger'", "list_trigger_schedules()"),
    row("runner-set-enabled", _runner(lambda r: r.set_trigger_enabled("ghost_trigger", False)),
        UnknownTriggerError, "unknown trigger 'ghost_trigger'", "list_trigger_schedules()"),
    row("runner-history", _runner(lambda r: r.get_trigger_execution_history("ghost_trigger")),
        UnknownTriggerError, "unknown trigger 'ghost_trigger'", "list_trigger_schedules()"),
    row("runner-execute-unknown-workflow", _runner(lambda r: r.execute("ghost_workflow", {})),
        UnknownWorkflowError, "unknown workflow 'ghost_workflow'", "registered workflows: ",
        "Define it with WorkflowBuilder"),
    row("runner-bad-url", lambda lab: _raised(lambda: DefaultRunner("not a url")), ConfigurationError,
        "database URL 'not a url' is not a URL", "use e.g. 'sqlite://workflows.db'"),
    # unknown names in the CLI (a real celery command)
    row("cli-enable", lambda lab: lab.cli("enable", "ghost_trigger"), "exit 64",
        "Error: unknown trigger 'ghost_trigger'", "'celery cloaca list' shows the triggers"),
    row("cli-disable", lambda lab: lab.cli("disable", "ghost_trigger"), "exit 64",
        "Error: unknown trigger 'ghost_trigger'", "'celery cloaca list' shows the triggers"),
    row("cli-history", lambda lab: lab.cli("history", "ghost_trigger"), "exit 64",
        "Error: unknown trigger 'ghost_trigger'", "'celery cloaca list' shows the triggers"),
    row("cli-poll", lambda lab: lab.cli("poll", "ghost_trigger"), "exit 64",
        "Error: unknown trigger 'ghost_trigger'", "known triggers: 'always_fires'"),
    # unknown names in the Django admin
    row("admin-disable-missing-row", _admin_missing_row("disable_triggers"), "HTTP 302, error",
        "No such trigger: 'ghost_trigger' (no schedule row)", "nothing was done", "Reload the list",
        marks=DJANGO),
    row("admin-poll-missing-row", _admin_missing_row("poll_now"), "HTTP 302, error",
        "No such trigger: 'ghost_trigger' (no schedule row)", "Reload the list", marks=DJANGO),
    row("admin-change-url-missing-row", _admin_missing_url, "HTTP 302, warning",
        "\u201cghost_trigger\u201d doesn\u2019t exist", marks=DJANGO),
    row("admin-poll-not-in-code", _admin_poll_not_in_code, "HTTP 302, error",
        "Not polled: 'retired_trigger' (registered = False)", "no poll was sent",
        "Deploy the code that defines it", marks=DJANGO),
]


@pytest.mark.parametrize("bad", BAD_INPUT)
def test_bad_input_gets_its_clear_error(lab: Lab, bad: Bad) -> None:
    refusal = bad.provoke(lab)
    assert refusal.error == bad.error, refusal
    for needle in bad.needles:
        assert needle in refusal.message, f"{needle!r} not in {refusal.message!r}"


def test_the_poll_rows_would_see_a_fire(lab: Lab) -> None:
    """The control of the poll rows: at the limit a context fires, publishes and is recorded."""
    installation = lab.install(max_context_bytes=2048)
    name = _unique("at_limit")
    blob = "x" * (2048 - len('{"blob":""}'))
    cloaca.trigger(workflow=_workflow(), name=name)(lambda: TriggerResult.fire({"blob": blob}))
    published: list[str] = []
    report = _poll_recording(installation, name, published)
    assert report.status == "fired", report
    assert len(published) == 1, published  # the chain: its first step, carrying the rest
    [execution] = installation.store.execution_history(name)
    assert execution["status"] == "queued" and execution["context"] == {"blob": blob}
    sql_store = installation.store
    assert isinstance(sql_store, SqlStore)
    with sql_store.engine.connect() as conn:
        assert len(conn.execute(select(claims).where(claims.c.trigger_name == name)).all()) == 1


# -- names and contexts with SQL metacharacters and unicode --------------------------------


AWKWARD_NAMES = [
    "'; DROP TABLE cloaca_schedules; --",
    "Robert'); DELETE FROM cloaca_executions; --",
    "%s %(name)s %% {0} \\ \\\\ \" `",
    "émoji 🚀 ünïcödé ﷽",
    "שלום עולם مرحبا",
    "名前 \u200f\u202e mixed",
]
AWKWARD_VALUES = [*AWKWARD_NAMES, "nul \x00 byte", "", "\\u0000 not a nul", "a\tb\nc\r"]
CLI_NAME = "'; DROP TABLE cloaca_schedules; -- Robert'); %s \\ 🚀 שלום"


@pytest.fixture(params=["sqlite", "postgresql"])
def awkward_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL schema of the test's own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'awkward.db'}"
        return
    with postgres_schema("faults_awkward_") as schema:
        yield postgres_url_in(schema)


def _awkward_context(value: str) -> dict[str, Any]:
    return {"text": value, value: [value, {value: value}], "n": 1}


def test_awkward_names_and_contexts_round_trip_unchanged(awkward_url: str) -> None:
    workflow = _workflow()
    names = [f"{t} {uuid.uuid4().hex[:4]}" for t in AWKWARD_NAMES]
    for name, value in zip(names, AWKWARD_NAMES, strict=True):
        cloaca.trigger(workflow=workflow, name=name, allow_concurrent=True)(
            lambda value=value: TriggerResult.fire(_awkward_context(value))
        )
    values_trigger = _unique("values")
    contexts = iter([_awkward_context(v) for v in AWKWARD_VALUES])
    cloaca.trigger(workflow=workflow, name=values_trigger, allow_concurrent=True)(
        lambda: TriggerResult.fire(next(contexts))
    )
    app = Celery(_unique("awkward"), set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    cloaca.install(app, database_url=awkward_url, embedded=False)
    installation = get_installation(app)
    runner = DefaultRunner(store=installation.store)
    try:
        for name in names:
            assert runner.get_trigger_schedule(name)["trigger_name"] == name
            assert installation.poller().poll(name).status == "fired"
        for _ in AWKWARD_VALUES:
            assert installation.poller().poll(values_trigger).status == "fired"
        listed = {row["trigger_name"] for row in runner.list_trigger_schedules()}
        assert set(names) <= listed
        for name, value in zip(names, AWKWARD_NAMES, strict=True):
            [execution] = runner.get_trigger_execution_history(name)
            assert execution["trigger_name"] == name
            assert execution["context"] == _awkward_context(value)
            assert execution["status"] == "succeeded"
            assert execution["context_hash"] == context_hash(_awkward_context(value))
            runner.set_trigger_enabled(name, False)
            assert runner.get_trigger_schedule(name)["enabled"] is False
            assert installation.poller().poll(name).status == "not_polled"
        history = runner.get_trigger_execution_history(values_trigger)
        assert [e["context"] for e in reversed(history)] == [_awkward_context(v) for v in AWKWARD_VALUES]
        # The tables the "injections" name are all still there, with every row.
        assert {row["trigger_name"] for row in runner.list_trigger_schedules()} == set(triggers.names())
        assert installation.store.get_execution(history[0]["execution_id"])["status"] == "succeeded"
    finally:
        installation.store.close()


def test_awkward_names_and_contexts_come_out_of_the_cli_unchanged(
    awkward_url: str, tmp_path: Path,
) -> None:
    """``cloaca list``, ``history``, ``disable`` and ``enable`` on a name made of every nasty."""
    value = "Robert'); -- 🚀 שלום %s \\"
    context = {"t": value}
    cloaca.trigger(workflow=_workflow(), name=CLI_NAME, allow_concurrent=True)(
        lambda: TriggerResult.fire(context)
    )
    app = Celery(_unique("awkward_cli"), set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    cloaca.install(app, database_url=awkward_url, embedded=False)
    installation = get_installation(app)
    try:
        installation.store.sync_triggers([triggers.get(CLI_NAME).spec()],
                                         time.time(), prune=False)
        report = installation.poller().poll(CLI_NAME)
        assert report.status == "fired"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
        env.update(CLI_DATABASE_URL=awkward_url, PYTHONPATH=os.pathsep.join([str(CLI_APP), str(REPO)]),
                   PYTHONIOENCODING="utf-8")

        def run(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "celery", "-A", "cli_proj", "cloaca", *args],
                                  env=env, cwd=tmp_path, capture_output=True, text=True,
                                  encoding="utf-8", timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        listing = run("list").splitlines()
        assert any(line.startswith(CLI_NAME + "  ") for line in listing), listing
        history = run("history", CLI_NAME).splitlines()
        assert len(history) == 2, history
        assert report.execution_id is not None and history[1].startswith(report.execution_id)
        shown = json.dumps(context, sort_keys=True, ensure_ascii=False)
        assert shown in history[1], history[1]
        assert run("disable", CLI_NAME, "--by", "ops").strip() == f"{CLI_NAME}: disabled by ops"
        assert installation.store.get_schedule(CLI_NAME)["enabled"] is False
        assert run("enable", CLI_NAME).strip() == f"{CLI_NAME}: enabled"
        assert installation.store.get_schedule(CLI_NAME)["enabled"] is True
    finally:
        installation.store.close()
