"""SqlStore on SQLite: schema, schedule sync, claims, poll leases and their outcomes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from cloaca_celery.sqlengine import create_store_engine, redact_url
from cloaca_celery.sqlstore import SqlStore, normalize_database_url
from cloaca_celery.store import NewExecution, PollLease, PollOutcome, PollRefusal, Store, TriggerSpec
from tests.support.sqlite import migrated_sqlite

T0 = 1_700_000_000.0
LEASE = 60.0


def spec(
    name: str, interval: float = 5.0, workflow: str = "wf", allow_concurrent: bool = False
) -> TriggerSpec:
    return TriggerSpec(
        name=name, workflow=workflow, poll_interval=interval, allow_concurrent=allow_concurrent
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    sql_store = SqlStore(migrated_sqlite(tmp_path / "store.db"))
    sql_store.ensure_schema()
    yield sql_store
    sql_store.close()


def claimed(store: SqlStore, now: float, limit: int = 100) -> list[str]:
    return sorted(due.trigger_name for due in store.claim_due(now, limit))


def lease_of(store: SqlStore, name: str, now: float = T0, token: str = "tok") -> PollLease:
    taken = store.begin_poll(name, now, LEASE, token)
    assert isinstance(taken, PollLease), taken
    return taken


# -- URLs and schema -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://workflows.db", "sqlite:///workflows.db"),
        ("sqlite://data/workflows.db", "sqlite:///data/workflows.db"),
        ("sqlite://:memory:", "sqlite://"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///abs.db", "sqlite:///abs.db"),
        ("sqlite:////tmp/abs.db", "sqlite:////tmp/abs.db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_normalize_database_url_refuses_a_non_url() -> None:
    with pytest.raises(ValueError, match="nourl"):
        normalize_database_url("nourl")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw@db/prod?password=s3cret&sslmode=require",
         "postgresql+psycopg://app:***@db/prod?password=***&sslmode=require"),
        ("postgresql://db/prod?PassWord=s3cret&sslkey=/etc/k.pem&application_name=beat",
         "postgresql+psycopg://db/prod?PassWord=***&application_name=beat&sslkey=***"),
        ("mysql://root@db/app?auth_token=s3cret&charset=utf8mb4",
         "mysql+pymysql://root@db/app?auth_token=***&charset=utf8mb4"),
        ("postgresql://db/prod?passwd=s3cret%26more&client_secret=s3cret",
         "postgresql+psycopg://db/prod?client_secret=***&passwd=***"),
        ("mysql://root@db/app?charset=utf8mb4", "mysql+pymysql://root@db/app?charset=utf8mb4"),
        ("not a url :: password=x?API_KEY=s3cret", "not a url :: password=x?API_KEY=***"),
    ],
)
def test_redact_url_hides_passwords_and_secret_query_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_store_errors_never_carry_the_statements_parameters(store: SqlStore) -> None:
    """An error text may end up in a log or a poll's ``last_error``: never with a row's values."""
    started = datetime.now(timezone.utc)
    execution = NewExecution("e-1", "orders", "wf", {"api_token": "tok-s3cret"}, "h" * 64, ["e-1"], started)
    assert store.record_fire(execution, claim=False, now=T0, deadline=T0 + 60) is True
    with pytest.raises(IntegrityError) as caught:
        store.record_fire(execution, claim=False, now=T0, deadline=T0 + 60)
    assert "tok-s3cret" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
    for url in ("postgresql://app@db/prod", "mysql://root@db/app", "sqlite://"):
        assert create_store_engine(url).hide_parameters is True, url


def test_sqlstore_satisfies_the_store_protocol(store: SqlStore) -> None:
    assert isinstance(store, Store)
    assert store.dialect == "sqlite"


def test_ensure_schema_is_idempotent_and_keeps_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.db'}"
    first = SqlStore(url)
    first.ensure_schema()
    first.sync_triggers([spec("kept")], T0)
    first.close()
    second = SqlStore(url)
    second.ensure_schema()
    second.ensure_schema()
    assert [s["trigger_name"] for s in second.list_schedules()] == ["kept"]
    second.close()


def test_cloaca_style_relative_url_creates_the_file_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SqlStore("sqlite://relative.db")
    relative.ensure_schema()
    relative.sync_triggers([spec("rel")], T0)
    assert relative.get_schedule("rel")["enabled"] is True
    relative.close()
    assert (tmp_path / "relative.db").is_file()


def test_in_memory_store_works_and_shares_one_database() -> None:
    memory = SqlStore("sqlite://:memory:")
    memory.ensure_schema()
    memory.sync_triggers([spec("mem")], T0)
    assert claimed(memory, T0) == ["mem"]
    assert isinstance(memory.begin_poll("mem", T0, LEASE, "t"), PollLease)
    assert memory.get_schedule("mem")["last_poll_at"] is not None
    memory.close()


# -- sync_triggers -------------------------------------------------------------------


def test_sync_creates_enabled_rows(store: SqlStore) -> None:
    store.sync_triggers([spec("a", 5.0), spec("b", 0.5, workflow="other", allow_concurrent=True)], T0)
    schedules = {s["trigger_name"]: s for s in store.list_schedules()}
    assert sorted(schedules) == ["a", "b"]
    a = schedules["a"]
    assert a["enabled"] is True
    assert a["registered"] is True
    assert a["workflow"] == "wf"
    assert a["poll_interval"] == 5.0
    assert a["allow_concurrent"] is False
    assert a["consecutive_errors"] == 0
    assert a["last_error"] is None
    assert a["last_poll_at"] is None
    assert a["last_fire_at"] is None
    assert a["state"] == {}
    b = schedules["b"]
    assert (b["workflow"], b["poll_interval"], b["allow_concurrent"]) == ("other", 0.5, True)


def test_sync_keeps_an_operators_enabled_false(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    store.set_enabled("a", False)
    store.sync_triggers([spec("a")], T0 + 1)
    assert store.get_schedule("a")["enabled"] is False
    store.sync_triggers([spec("a", interval=10.0)], T0 + 2)
    schedule = store.get_schedule("a")
    assert schedule["enabled"] is False
    assert schedule["poll_interval"] == 10.0


def test_sync_updates_changed_definitions(store: SqlStore) -> None:
    store.sync_triggers([spec("a", 5.0)], T0)
    store.sync_triggers([spec("a", 2.0, workflow="new_wf", allow_concurrent=True)], T0 + 1)
    schedule = store.get_schedule("a")
    assert (schedule["workflow"], schedule["poll_interval"], schedule["allow_concurrent"]) == (
        "new_wf", 2.0, True,
    )


def test_sync_marks_removed_triggers_unregistered_and_stops_claiming_them(store: SqlStore) -> None:
    store.sync_triggers([spec("stays"), spec("goes")], T0)
    store.sync_triggers([spec("stays")], T0)
    assert store.get_schedule("goes")["registered"] is False
    assert store.get_schedule("stays")["registered"] is True
    assert claimed(store, T0 + 100) == ["stays"]
    assert claimed(store, T0 + 200) == ["stays"]


def test_sync_registers_a_returning_trigger_again(store: SqlStore) -> None:
    store.sync_triggers([spec("back")], T0)
    store.sync_triggers([], T0)
    assert claimed(store, T0) == []
    store.sync_triggers([spec("back")], T0 + 10)
    assert store.get_schedule("back")["registered"] is True
    assert claimed(store, T0 + 10) == ["back"]


# -- claim_due ------------------------------------------------------------------------


def test_claim_due_returns_due_rows_once_per_interval(store: SqlStore) -> None:
    store.sync_triggers([spec("a", 5.0)], T0)
    due = store.claim_due(T0, 100)
    assert [(d.trigger_name, d.poll_interval) for d in due] == [("a", 5.0)]
    assert claimed(store, T0) == []
    assert claimed(store, T0 + 4.9) == []
    assert claimed(store, T0 + 5.0) == ["a"]
    assert claimed(store, T0 + 5.0) == []


def test_claim_due_after_falling_behind_does_not_burst(store: SqlStore) -> None:
    store.sync_triggers([spec("a", 5.0)], T0)
    assert claimed(store, T0) == ["a"]
    # An hour passes: one claim, then the next one interval later, not 720 catch-up claims.
    late = T0 + 3600
    assert claimed(store, late) == ["a"]
    assert claimed(store, late) == []
    assert claimed(store, late + 4.9) == []
    assert claimed(store, late + 5.0) == ["a"]


def test_claim_due_skips_triggers_not_due_yet(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    assert claimed(store, T0 - 1) == []


def test_claim_due_respects_the_limit(store: SqlStore) -> None:
    store.sync_triggers([spec(f"t{i}") for i in range(5)], T0)
    first = claimed(store, T0, limit=2)
    second = claimed(store, T0, limit=10)
    assert len(first) == 2
    assert len(second) == 3
    assert sorted(first + second) == [f"t{i}" for i in range(5)]


def test_disabled_triggers_are_not_claimed(store: SqlStore) -> None:
    store.sync_triggers([spec("on"), spec("off")], T0)
    store.set_enabled("off", False)
    assert claimed(store, T0) == ["on"]
    assert claimed(store, T0 + 60) == ["on"]
    store.set_enabled("off", True)
    assert claimed(store, T0 + 120) == ["off", "on"]


def test_a_leased_trigger_is_not_claimed(store: SqlStore) -> None:
    store.sync_triggers([spec("busy")], T0)
    lease_of(store, "busy")
    assert claimed(store, T0 + 1) == []


# -- begin_poll / finish_poll -------------------------------------------------------------


def test_begin_poll_returns_a_lease_and_stamps_last_poll_at(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    lease = store.begin_poll("a", T0, LEASE, "token-1")
    assert isinstance(lease, PollLease)
    assert lease.trigger_name == "a"
    assert lease.token == "token-1"
    assert lease.until == T0 + LEASE
    assert lease.state == {}
    assert lease.state_version == 0
    assert lease.consecutive_errors == 0
    assert store.get_schedule("a")["last_poll_at"] == datetime.fromtimestamp(T0, tz=timezone.utc)


def test_second_begin_poll_while_leased_is_refused_as_running(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    lease_of(store, "a", token="first")
    assert store.begin_poll("a", T0 + 1, LEASE, "second") == PollRefusal("a", "running")


def test_an_expired_lease_can_be_taken_over(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    lease_of(store, "a", token="first")
    later = store.begin_poll("a", T0 + LEASE + 1, LEASE, "second")
    assert isinstance(later, PollLease)
    assert later.token == "second"


def test_begin_poll_on_a_disabled_trigger_is_refused(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    store.set_enabled("a", False)
    assert store.begin_poll("a", T0, LEASE, "t") == PollRefusal("a", "disabled")


def test_begin_poll_on_an_unknown_trigger_is_refused_as_missing(store: SqlStore) -> None:
    assert store.begin_poll("nobody", T0, LEASE, "t") == PollRefusal("nobody", "missing")


def test_finish_poll_releases_the_lease(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    lease = lease_of(store, "a", token="first")
    assert store.finish_poll(lease, PollOutcome(), T0 + 1) is True
    again = store.begin_poll("a", T0 + 2, LEASE, "second")
    assert isinstance(again, PollLease)


def test_finish_poll_counts_errors_and_resets_after_a_success(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    assert store.finish_poll(lease_of(store, "a", T0), PollOutcome(error="RuntimeError: one"), T0 + 1)
    schedule = store.get_schedule("a")
    assert schedule["consecutive_errors"] == 1
    assert schedule["last_error"] == "RuntimeError: one"
    assert schedule["last_error_at"] == datetime.fromtimestamp(T0 + 1, tz=timezone.utc)

    lease = lease_of(store, "a", T0 + 2)
    assert lease.consecutive_errors == 1
    assert store.finish_poll(lease, PollOutcome(error="RuntimeError: two"), T0 + 3)
    schedule = store.get_schedule("a")
    assert schedule["consecutive_errors"] == 2
    assert schedule["last_error"] == "RuntimeError: two"

    assert store.finish_poll(lease_of(store, "a", T0 + 4), PollOutcome(), T0 + 5)
    assert store.get_schedule("a")["consecutive_errors"] == 0


def test_finish_poll_records_the_fire_time(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    fired = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert store.finish_poll(lease_of(store, "a"), PollOutcome(fired_at=fired), T0 + 1)
    assert store.get_schedule("a")["last_fire_at"] == fired


def test_finish_poll_saves_state_and_bumps_its_version(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    first = lease_of(store, "a", T0)
    assert store.finish_poll(first, PollOutcome(state={"cursor": 1, "seen": ["x"]}), T0 + 1)
    assert store.get_schedule("a")["state"] == {"cursor": 1, "seen": ["x"]}

    second = lease_of(store, "a", T0 + 2)
    assert second.state == {"cursor": 1, "seen": ["x"]}
    assert second.state_version == first.state_version + 1

    assert store.finish_poll(second, PollOutcome(), T0 + 3)
    third = lease_of(store, "a", T0 + 4)
    assert third.state == {"cursor": 1, "seen": ["x"]}
    assert third.state_version == second.state_version


def test_finish_poll_with_a_wrong_token_returns_false_and_keeps_the_lease(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    real = lease_of(store, "a", token="real")
    forged = PollLease(trigger_name="a", token="forged", until=real.until)
    assert store.finish_poll(forged, PollOutcome(error="nope", state={"x": 1}), T0 + 1) is False
    schedule = store.get_schedule("a")
    assert schedule["consecutive_errors"] == 0
    assert schedule["state"] == {}
    assert store.begin_poll("a", T0 + 2, LEASE, "other") == PollRefusal("a", "running")
    assert store.finish_poll(real, PollOutcome(), T0 + 3) is True


def test_finish_poll_after_losing_the_lease_returns_false(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    stale = lease_of(store, "a", T0, token="stale")
    fresh = lease_of(store, "a", T0 + LEASE + 1, token="fresh")
    assert store.finish_poll(stale, PollOutcome(error="late"), T0 + LEASE + 2) is False
    assert store.get_schedule("a")["consecutive_errors"] == 0
    assert store.finish_poll(fresh, PollOutcome(), T0 + LEASE + 3) is True


# -- lookups and times -----------------------------------------------------------------


def test_get_schedule_of_an_unknown_name_raises_key_error(store: SqlStore) -> None:
    with pytest.raises(KeyError, match="ghost"):
        store.get_schedule("ghost")


def test_set_enabled_of_an_unknown_name_raises_key_error(store: SqlStore) -> None:
    with pytest.raises(KeyError, match="ghost"):
        store.set_enabled("ghost", False)


def test_set_enabled_needs_a_bool(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    with pytest.raises(TypeError):
        store.set_enabled("a", "no")  # type: ignore[arg-type]
    assert store.get_schedule("a")["enabled"] is True


def test_set_enabled_to_the_current_value_is_not_an_error(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    store.set_enabled("a", True)
    store.set_enabled("a", True)
    assert store.get_schedule("a")["enabled"] is True


def test_datetimes_are_timezone_aware_utc(store: SqlStore) -> None:
    store.sync_triggers([spec("a")], T0)
    fired = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    store.finish_poll(lease_of(store, "a"), PollOutcome(error="x", fired_at=fired), T0 + 1)
    schedule = store.get_schedule("a")
    for key in ("last_poll_at", "last_fire_at", "last_error_at", "created_at", "updated_at", "next_poll_at"):
        value = schedule[key]
        assert isinstance(value, datetime), key
        assert value.utcoffset() == timedelta(0), key
    assert schedule["last_fire_at"] == fired
    assert schedule["created_at"] == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert store.list_schedules()[0]["last_poll_at"].tzinfo is not None


def test_list_schedules_is_sorted_by_name(store: SqlStore) -> None:
    store.sync_triggers([spec("b"), spec("c"), spec("a")], T0)
    assert [s["trigger_name"] for s in store.list_schedules()] == ["a", "b", "c"]
