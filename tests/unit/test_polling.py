"""Poller: one poll of one trigger against a SQLite store, with workflows run eagerly."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import cloaca_celery
from cloaca_celery import Context, TriggerResult, WorkflowBuilder, task, trigger
from cloaca_celery.context import context_hash
from cloaca_celery.installation import Installation, get_installation
from cloaca_celery.slots import Slot
from tests.support.sqlite import migrated_sqlite

MakeInstallation = Callable[..., Installation]



@pytest.fixture
def make_installation(tmp_path: Path) -> Iterator[MakeInstallation]:
    """Install cloaca on a fresh eager app with its own SQLite store."""
    apps: list[Celery] = []

    def make(**options: Any) -> Installation:
        app = Celery("t", set_as_current=False)
        app.conf.update(task_always_eager=True, task_eager_propagates=True)
        database = migrated_sqlite(tmp_path / f"cloaca-{len(apps)}.db")
        cloaca_celery.install(app, database_url=database, embedded=False, **options)
        apps.append(app)
        return get_installation(app)

    yield make
    for app in apps:
        get_installation(app).store.close()
        app.close()


@pytest.fixture
def installation(make_installation: MakeInstallation) -> Installation:
    return make_installation()


@pytest.fixture
def received() -> list[dict[str, Any]]:
    """Contexts seen by the first step of the workflow ``recorded``."""
    seen: list[dict[str, Any]] = []

    # A unique Celery name: shared tasks are kept per name, first definition wins.
    @task(id="record", name=f"unit.polling.record.{uuid.uuid4().hex}")
    def record(context: Context) -> Context:
        seen.append(context.to_dict())
        return context

    with WorkflowBuilder("recorded") as builder:
        builder.add_task(record)
    return seen


def poll(installation: Installation, name: str) -> Any:
    return installation.poller().poll(name)


# -- skip and fire ---------------------------------------------------------------


def test_skip_returns_skipped_and_runs_nothing(installation: Installation, received: list[Any]) -> None:
    @trigger(workflow="recorded")
    def quiet() -> TriggerResult:
        return TriggerResult.skip()

    report = poll(installation, "quiet")
    assert report.status == "skipped"
    assert report.trigger_name == "quiet"
    assert report.execution_id is None
    assert received == []
    schedule = installation.store.get_schedule("quiet")
    assert schedule["last_poll_at"] is not None
    assert schedule["last_fire_at"] is None
    assert schedule["consecutive_errors"] == 0


def test_fire_runs_the_workflow_with_context_and_trigger_metadata(
    installation: Installation, received: list[dict[str, Any]]
) -> None:
    @trigger(workflow="recorded")
    def file_watcher() -> TriggerResult:
        return TriggerResult.fire(Context({"filename": "in.csv", "size": 3}))

    before = datetime.now(timezone.utc)
    report = poll(installation, "file_watcher")
    assert report.status == "fired"
    assert len(received) == 1
    context = received[0]
    assert set(context) == {"filename", "size", "trigger_name", "triggered_at", "execution_id"}
    assert context["filename"] == "in.csv"
    assert context["size"] == 3
    assert context["trigger_name"] == "file_watcher"
    triggered_at = datetime.fromisoformat(context["triggered_at"])
    assert triggered_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= triggered_at <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert context["execution_id"] == report.execution_id
    assert str(uuid.UUID(context["execution_id"])) == context["execution_id"]
    # The hash covers the user's context only, not the keys cloaca adds.
    assert report.context_hash == context_hash({"filename": "in.csv", "size": 3})
    assert installation.store.get_schedule("file_watcher")["last_fire_at"] is not None


def test_fire_with_a_plain_dict(installation: Installation, received: list[dict[str, Any]]) -> None:
    @trigger(workflow="recorded")
    def dict_fire() -> TriggerResult:
        return TriggerResult.fire({"order_id": 7})

    assert poll(installation, "dict_fire").status == "fired"
    assert received[0]["order_id"] == 7


def test_each_fire_gets_its_own_execution_id(installation: Installation, received: list[Any]) -> None:
    @trigger(workflow="recorded", allow_concurrent=True)
    def twice() -> bool:
        return True

    first = poll(installation, "twice")
    second = poll(installation, "twice")
    assert first.status == second.status == "fired"
    assert first.execution_id != second.execution_id
    assert [c["execution_id"] for c in received] == [first.execution_id, second.execution_id]


def test_true_fires_without_context(installation: Installation, received: list[dict[str, Any]]) -> None:
    @trigger(workflow="recorded")
    def yes() -> bool:
        return True

    report = poll(installation, "yes")
    assert report.status == "fired"
    assert set(received[0]) == {"trigger_name", "triggered_at", "execution_id"}
    assert report.context_hash == context_hash({})


def test_false_skips(installation: Installation, received: list[Any]) -> None:
    @trigger(workflow="recorded")
    def no() -> bool:
        return False

    assert poll(installation, "no").status == "skipped"
    assert received == []


def test_reserved_keys_in_the_users_context_are_replaced(
    installation: Installation, received: list[dict[str, Any]]
) -> None:
    @trigger(workflow="recorded")
    def spoof() -> TriggerResult:
        return TriggerResult.fire({"trigger_name": "someone_else", "x": 1})

    report = poll(installation, "spoof")
    assert received[0]["trigger_name"] == "spoof"
    assert received[0]["x"] == 1
    assert report.context_hash == context_hash({"trigger_name": "someone_else", "x": 1})


def test_each_installed_app_polls_through_its_own_store(
    make_installation: MakeInstallation, received: list[Any]
) -> None:
    @trigger(workflow="recorded")
    def via_task() -> bool:
        return False

    first = make_installation()
    second = make_installation()
    for installation in (first, second):
        result = installation.app.tasks["cloaca.poll"].apply(args=("via_task",)).get()
        assert result["status"] == "skipped"
        assert result["trigger_name"] == "via_task"
        assert installation.store.get_schedule("via_task")["last_poll_at"] is not None


def test_install_adds_no_tasks_to_other_apps(make_installation: MakeInstallation) -> None:
    installed = make_installation()
    assert "cloaca.poll" in installed.app.tasks
    other = Celery("other", set_as_current=False)
    try:
        assert "cloaca.poll" not in other.tasks
        assert "cloaca.dispatch" not in other.tasks
    finally:
        other.close()


# -- errors ------------------------------------------------------------------------


def test_a_raising_trigger_is_counted_and_logged(
    installation: Installation, received: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @trigger(workflow="recorded")
    def flaky_source() -> TriggerResult:
        raise RuntimeError("source unreachable")

    caplog.set_level(logging.WARNING, logger="cloaca_celery")
    report = poll(installation, "flaky_source")
    assert report.status == "error"
    assert "source unreachable" in report.detail
    schedule = installation.store.get_schedule("flaky_source")
    assert schedule["consecutive_errors"] == 1
    assert "source unreachable" in schedule["last_error"]
    assert "RuntimeError" in schedule["last_error"]

    assert poll(installation, "flaky_source").status == "error"
    assert installation.store.get_schedule("flaky_source")["consecutive_errors"] == 2

    failures = [r for r in caplog.records if "source unreachable" in r.getMessage()]
    assert len(failures) == 2
    assert all("flaky_source" in r.getMessage() for r in failures)
    assert failures[0].levelno == logging.ERROR
    assert received == []


def test_a_success_after_errors_resets_the_count(installation: Installation, received: list[Any]) -> None:
    outcomes = iter([RuntimeError("first"), RuntimeError("second"), False])

    @trigger(workflow="recorded")
    def recovers() -> bool:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert poll(installation, "recovers").status == "error"
    assert poll(installation, "recovers").status == "error"
    assert installation.store.get_schedule("recovers")["consecutive_errors"] == 2
    assert poll(installation, "recovers").status == "skipped"
    assert installation.store.get_schedule("recovers")["consecutive_errors"] == 0


@pytest.mark.parametrize("wrong", ["yes", None, 1, {"fire": True}])
def test_a_wrong_return_type_is_an_error_naming_the_trigger(
    installation: Installation, received: list[Any], wrong: object, caplog: pytest.LogCaptureFixture
) -> None:
    @trigger(workflow="recorded", name="wrong_type")
    def wrong_type() -> object:
        return wrong

    caplog.set_level(logging.WARNING, logger="cloaca_celery")
    report = poll(installation, "wrong_type")
    assert report.status == "error"
    assert "wrong_type" in report.detail
    assert type(wrong).__name__ in report.detail
    schedule = installation.store.get_schedule("wrong_type")
    assert schedule["consecutive_errors"] == 1
    assert "wrong_type" in schedule["last_error"]
    assert any("wrong_type" in r.getMessage() for r in caplog.records)
    assert received == []


def test_fire_of_an_unregistered_workflow_records_an_error(
    installation: Installation, caplog: pytest.LogCaptureFixture
) -> None:
    @trigger(workflow="no_such_workflow")
    def orphan() -> bool:
        return True

    caplog.set_level(logging.WARNING, logger="cloaca_celery")
    report = poll(installation, "orphan")
    assert report.status == "error"
    assert "no_such_workflow" in report.detail
    schedule = installation.store.get_schedule("orphan")
    assert schedule["consecutive_errors"] == 1
    assert "no_such_workflow" in schedule["last_error"]
    assert schedule["last_fire_at"] is None
    assert any("orphan" in r.getMessage() for r in caplog.records)


def test_a_context_over_max_context_bytes_records_an_error(
    make_installation: MakeInstallation, received: list[Any]
) -> None:
    installation = make_installation(max_context_bytes=100)

    @trigger(workflow="recorded")
    def too_big() -> TriggerResult:
        return TriggerResult.fire({"blob": "x" * 500})

    @trigger(workflow="recorded")
    def small_enough() -> TriggerResult:
        return TriggerResult.fire({"blob": "x" * 10})

    report = poll(installation, "too_big")
    assert report.status == "error"
    last_error = installation.store.get_schedule("too_big")["last_error"]
    assert "too_big" in last_error
    assert "cloaca_max_context_bytes" in last_error
    assert received == []
    assert poll(installation, "small_enough").status == "fired"
    assert len(received) == 1


# -- state and enabling ----------------------------------------------------------------


def test_a_trigger_taking_state_sees_its_saved_state(installation: Installation, received: list[Any]) -> None:
    seen: list[dict[str, Any]] = []

    @trigger(workflow="recorded")
    def counter(state: dict[str, Any]) -> bool:
        seen.append(dict(state))
        state["count"] = state.get("count", 0) + 1
        return False

    for _ in range(3):
        assert poll(installation, "counter").status == "skipped"
    assert seen == [{}, {"count": 1}, {"count": 2}]
    assert installation.store.get_schedule("counter")["state"] == {"count": 3}


def test_state_is_shared_by_separate_pollers(installation: Installation, received: list[Any]) -> None:
    @trigger(workflow="recorded")
    def cursor(state: dict[str, Any]) -> TriggerResult:
        position = state.get("position", 0)
        state["position"] = position + 1
        return TriggerResult.fire({"position": position})

    installation.poller().poll("cursor")
    installation.poller().poll("cursor")
    assert [c["position"] for c in received] == [0, 1]


def test_a_disabled_trigger_is_not_polled(installation: Installation, received: list[Any]) -> None:
    calls: list[int] = []

    @trigger(workflow="recorded")
    def switchable() -> bool:
        calls.append(1)
        return True

    assert poll(installation, "switchable").status == "fired"
    installation.store.set_enabled("switchable", False)
    report = poll(installation, "switchable")
    assert report.status == "not_polled"
    assert report.detail == "disabled"
    assert len(calls) == 1
    assert len(received) == 1

    installation.store.set_enabled("switchable", True)
    assert poll(installation, "switchable").status == "fired"
    assert len(calls) == 2


def test_first_poll_creates_the_schedule_row(installation: Installation, received: list[Any]) -> None:
    @trigger(workflow="recorded", poll_interval="2s")
    def fresh() -> bool:
        return False

    with pytest.raises(KeyError):
        installation.store.get_schedule("fresh")
    assert poll(installation, "fresh").status == "skipped"
    schedule = installation.store.get_schedule("fresh")
    assert schedule["enabled"] is True
    assert schedule["poll_interval"] == 2.0
    assert schedule["workflow"] == "recorded"


# -- what a scheduled poll writes ------------------------------------------------------


@pytest.fixture
def statements(installation: Installation) -> Iterator[list[str]]:
    """Every SQL statement the store sends from now on (the clock's offset measured before:
    one read of the database's time every few minutes per process)."""
    from sqlalchemy import event

    installation.clock.measure()
    engine = installation.store.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lstrip())

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def only_writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]


def slot_of(installation: Installation, name: str, now: float) -> Slot:
    """The slot the dispatcher claims for ``name`` at ``now`` and sends at once."""
    [due] = [d for d in installation.store.claim_due(now, 100) if d.trigger_name == name]
    return Slot.claimed(due.due, due.next_due, due.poll_interval, now, due.errors)


def test_an_on_time_scheduled_skip_writes_nothing(installation: Installation, statements: list[str]) -> None:
    @trigger(workflow="recorded", poll_interval="10s")
    def idle() -> TriggerResult:
        return TriggerResult.skip()

    installation.store.sync_triggers([spec_of_name("idle")], time.time())
    slot = slot_of(installation, "idle", time.time())
    statements.clear()

    for _ in range(3):
        report = installation.poller().poll("idle", slot)
        assert report.status == "skipped"
    assert only_writes(statements) == []


def test_a_scheduled_fire_and_an_error_are_written(installation: Installation, received: list[Any],
                                                   statements: list[str]) -> None:
    calls = []

    @trigger(workflow="recorded", poll_interval="10s", allow_concurrent=True)
    def flaky() -> TriggerResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("flaky")
        return TriggerResult.fire(Context({"n": 1}))

    installation.store.sync_triggers([spec_of_name("flaky")], time.time())
    slot = slot_of(installation, "flaky", time.time())
    assert installation.poller().poll("flaky", slot).status == "error"
    assert installation.store.get_schedule("flaky")["consecutive_errors"] == 1
    following = slot_of(installation, "flaky", slot.next_due)  # it carries the error count
    assert installation.poller().poll("flaky", following, now=slot.next_due).status == "fired"
    row = installation.store.get_schedule("flaky")
    assert row["consecutive_errors"] == 0 and row["last_fire_at"] is not None
    assert [c["n"] for c in received] == [1]
    assert only_writes(statements)  # the error, the execution row, the fire time


def test_a_scheduled_poll_more_than_half_an_interval_late_is_dropped_unrun(
    installation: Installation, statements: list[str]
) -> None:
    calls: list[int] = []

    @trigger(workflow="recorded", poll_interval="10s")
    def late() -> TriggerResult:
        calls.append(1)
        return TriggerResult.skip()

    t0 = time.time()
    installation.store.sync_triggers([spec_of_name("late")], t0)
    slot = slot_of(installation, "late", t0)
    statements.clear()
    started = slot.next_due - 4.0  # 6 s into a 10 s slot
    report = installation.poller().poll("late", slot, now=started)
    assert (report.status, report.detail, calls, statements) == ("not_polled", "late", [], [])
    [again] = installation.store.claim_due(slot.next_due, 100)  # the next slot comes as usual
    assert again.trigger_name == "late"


def test_the_half_interval_counts_from_the_send_and_never_reaches_lease_by(
    installation: Installation, statements: list[str]
) -> None:
    # Sent 45 ms into a 100 ms slot (waiting for a 50 ms dispatch tick): it may start
    # until 90 ms (lease_by), not only until 50 ms.
    tight = Slot.claimed(10.0, 10.1, 0.1, 10.045)
    assert tight.start_by == tight.lease_by == 10.09
    assert Slot.claimed(10.0, 11.0, 1.0, 10.02).start_by == 10.52
    assert Slot.claimed(10.0, 11.0, 1.0, 9.99).start_by == 10.5  # sent early (clock skew): the slot counts
    calls: list[int] = []

    @trigger(workflow="recorded", poll_interval="10s")
    def tardy() -> TriggerResult:
        calls.append(1)
        return TriggerResult.skip()

    t0 = time.time()
    installation.store.sync_triggers([spec_of_name("tardy")], t0)
    slot = slot_of(installation, "tardy", t0)
    sent = Slot.claimed(slot.due, slot.next_due, 10.0, slot.due + 2.0)  # sent 2 s after its slot
    deadline = sent.start_by
    statements.clear()
    poller = installation.poller()
    on_time = poller.poll("tardy", sent, now=deadline - 0.01)
    assert (on_time.status, calls, statements) == ("skipped", [1], [])
    late = poller.poll("tardy", sent, now=deadline + 0.01)
    assert (late.status, late.detail, calls, statements) == ("not_polled", "late", [1], [])


def test_a_poll_running_into_the_next_slot_takes_its_lease_in_time(installation: Installation) -> None:
    claims: list[list[str]] = []
    store = installation.store

    @trigger(workflow="recorded", poll_interval="400ms")
    def slow() -> TriggerResult:
        # Still running when the next slot comes: the watchdog has taken the lease by then.
        time.sleep(max(0.0, slot.next_due + 0.05 - time.time()))
        claims.append([d.trigger_name for d in store.claim_due(time.time(), 100)])
        return TriggerResult.skip()

    store.sync_triggers([spec_of_name("slow")], time.time())
    slot = slot_of(installation, "slow", time.time())
    assert installation.poller().poll("slow", slot).status == "skipped"
    assert claims == [[]]
    assert store.get_schedule("slow")["consecutive_errors"] == 0
    assert [d.trigger_name for d in store.claim_due(time.time(), 100)] == ["slow"]  # released at its end


def spec_of_name(name: str) -> Any:
    from cloaca_celery.triggers import triggers

    return triggers.get(name).spec()


def test_a_dispatched_poll_of_a_stateless_trigger_does_not_touch_the_store(
    installation: Installation, statements: list[str]
) -> None:
    @trigger(workflow="recorded", poll_interval="10s")
    def bare() -> TriggerResult:
        return TriggerResult.skip()

    @trigger(workflow="recorded", poll_interval="10s")
    def keeps(state: dict[str, Any]) -> TriggerResult:
        return TriggerResult.skip()

    installation.store.sync_triggers([spec_of_name("bare"), spec_of_name("keeps")], time.time())
    now = time.time()
    slots = {d.trigger_name: Slot.claimed(d.due, d.next_due, d.poll_interval, now, d.errors)
             for d in installation.store.claim_due(now, 100)}
    statements.clear()
    for name in ("bare", "keeps"):
        report = installation.poller().poll(name, slots[name])
        assert report.status == "skipped"
    assert len(statements) == 1 and statements[0].upper().startswith("SELECT")  # keeps reads its state


def test_a_dispatched_poll_resets_the_error_count_it_was_sent(installation: Installation) -> None:
    @trigger(workflow="recorded", poll_interval="10s")
    def healed() -> TriggerResult:
        return TriggerResult.skip()

    store = installation.store
    store.sync_triggers([spec_of_name("healed")], time.time())
    lease = store.begin_poll("healed", time.time(), 30, "t")
    from cloaca_celery.store import PollLease, PollOutcome

    assert isinstance(lease, PollLease)
    store.finish_poll(lease, PollOutcome(error="RuntimeError: down"), time.time())
    slot = slot_of(installation, "healed", time.time() + 1)
    assert slot.errors == 1
    installation.poller().poll("healed", slot, now=time.time() + 1)
    assert store.get_schedule("healed")["consecutive_errors"] == 0


# -- health counts -----------------------------------------------------------------


def test_polls_are_counted_in_the_process_and_written_at_a_flush(
    installation: Installation, received: list[dict[str, Any]]
) -> None:
    answers = iter([False, True, True, False, "boom"])

    @trigger(workflow="recorded")
    def counted() -> Any:
        answer = next(answers)
        if answer == "boom":
            raise RuntimeError("boom")
        return TriggerResult.fire({"same": 1}) if answer else False

    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    statuses = [poll(installation, "counted").status for _ in range(5)]
    # The first fire's workflow ran (eagerly) to its end before the second fire: both fired.
    assert statuses == ["skipped", "fired", "fired", "skipped", "error"]
    assert installation.store.health("counted", since) == []  # counting writes nothing...
    assert installation.health.flush() == 1  # ...until the flush
    [row] = installation.store.health("counted", since)
    assert (row.polls, row.skips, row.fires, row.errors, sum(row.held.values())) == (5, 2, 2, 1, 0)
    assert row.poll_seconds.count == 5
    assert row.latency_seconds.count == len(received) == 2
    assert installation.store.last_polls()["counted"] == row.last_poll_at
