"""The SQL store's tables and django_cloaca's are the same tables.

Django's migrations and cloaca's Alembic migrations each build the three
tables. Alembic finds nothing to change in the tables Django made, but for the
differences docs/design.md lists, and each store reads and writes what the
other wrote (a claim taken by one store keeps the other from firing the same
context): the SQL store on the tables Django made (the Django test database:
SQLite, or PostgreSQL with ``CLOACA_TEST_DJANGO_DB=postgresql``), the Django
store on the tables Alembic made on SQLite. Not on PostgreSQL: there the SQL
store's JSON columns are ``json``, which Django's ``JSONField`` cannot read
(docs/design.md says why they stay so).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.sql import sqltypes

from cloaca_celery.sqlschema import metadata
from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import Held, NewExecution, PendingFire, PollLease, PollOutcome, Store, TriggerSpec
from tests.contract.conftest import new_name

T0 = 1_764_331_234.5
D0 = datetime(2025, 11, 28, 12, 0, 34, 500_000, tzinfo=timezone.utc)
QUEUED = 600.0
CONTEXT = {"order": 7, "lines": [{"sku": "A-1", "qty": 2}], "note": "Grüße"}
HASH = "c" * 64
KEY = "k" * 64
"""The work key of the pending fires' holder."""


def fire(execution_id: str, seconds: int) -> NewExecution:
    started_at = D0 + timedelta(seconds=seconds)
    return NewExecution(execution_id, "orders", "ship", CONTEXT, HASH, [f"{execution_id}-task"], started_at)


def fire_at(store: Store, execution_id: str, seconds: int) -> bool:
    now = T0 + seconds
    return store.record_fire(fire(execution_id, seconds), claim=True, now=now, deadline=now + QUEUED)


def hand_over(first: Store, second: Store) -> None:
    """``first`` writes a schedule, a poll's state, a claimed fire and its steps; ``second`` reads
    them and goes on from there; ``first`` reads what ``second`` wrote."""
    first.sync_triggers([TriggerSpec("orders", "ship", 5.0, False)], T0)
    lease = first.begin_poll("orders", T0, 60.0, "token-1")
    assert isinstance(lease, PollLease)
    assert first.finish_poll(lease, PollOutcome(fired_at=D0, state={"cursor": 41, "seen": ["a"]}), T0)
    assert fire_at(first, "e-1", 0)
    assert first.start_step("e-1", "e-1-a", T0 + 0.5, T0 + 30.5)
    assert first.start_step("e-1", "e-1-b", T0 + 0.5, T0 + 30.5)

    schedule = second.get_schedule("orders")
    assert (schedule["workflow"], schedule["poll_interval"], schedule["enabled"]) == ("ship", 5.0, True)
    assert (schedule["state"], schedule["last_fire_at"]) == ({"cursor": 41, "seen": ["a"]}, D0)
    first_fire = second.get_execution("e-1")
    assert (first_fire["context"], first_fire["status"], first_fire["started_at"]) == (CONTEXT, "running", D0)
    assert first_fire["running_at"] == D0 + timedelta(seconds=0.5)
    [overdue] = second.sweep_candidates(T0 + 31, 10)
    assert (overdue["execution_id"], overdue["deadline_at"]) == ("e-1", T0 + 30.5)
    assert [(step["task_id"], step["state"], step["started_at"]) for step in overdue["steps"]] == [
        ("e-1-a", "running", T0 + 0.5), ("e-1-b", "running", T0 + 0.5)
    ]
    assert second.renew_leases(["e-1", "e-0"], T0 + 60.25) == {"e-0"}
    assert second.end_overdue("e-1", "lost", "no heartbeat", T0 + 31) is False
    assert fire_at(second, "e-2", 1) is False
    assert second.request_end("e-1", "failed", "ValueError: a", T0 + 2, task_id="e-1-a") is False
    assert first.start_step("e-1", "e-1-c", T0 + 2, T0 + 32) is False
    assert first.end_step("e-1", "e-1-b", T0 + 3, T0 + 3 + QUEUED) is True
    assert (second.get_execution("e-1")["status"], second.get_execution("e-1")["error"]) == (
        "failed", "ValueError: a"
    )
    assert fire_at(second, "e-2", 1)
    lease = second.begin_poll("orders", T0 + 5, 60.0, "token-2")
    assert isinstance(lease, PollLease) and lease.state == {"cursor": 41, "seen": ["a"]}
    assert second.finish_poll(lease, PollOutcome(error="ValueError: boom", state={"cursor": 42}), T0 + 5)

    schedule = first.get_schedule("orders")
    assert (schedule["state"], schedule["consecutive_errors"]) == ({"cursor": 42}, 1)
    assert fire_at(first, "e-3", 2) is False
    history = first.execution_history("orders")
    assert [(e["execution_id"], e["status"]) for e in history] == [("e-2", "queued"), ("e-1", "failed")]
    assert first.end_overdue("e-2", "lost", "no step started", T0 + 1 + QUEUED + 1) is True
    assert second.prune_executions(D0 + timedelta(days=1)) == 2
    assert fire_at(second, "e-3", 2)
    hand_over_pending(first, second)


def keyed_fire(execution_id: str, seen: int) -> NewExecution:
    """A fire of ``orders`` whose work key is :data:`KEY` (the order), seen for the ``seen``-th time."""
    context = {**CONTEXT, "seen": seen}
    return NewExecution(execution_id, "orders", "ship", context, f"{seen:064d}", [f"{execution_id}-task"], D0,
                        dedup_hash=KEY)


def hand_over_pending(first: Store, second: Store) -> None:
    """Overlap policies and pending fires: ``first`` writes a policy, a keyed fire and fires held
    behind it; ``second`` reads them, and starts the oldest once the holder ends."""
    first.sync_triggers([
        TriggerSpec("orders", "ship", 5.0, overlap="buffer_all"), TriggerSpec("files", "ingest", 1.0, True)
    ], T0 + 100)
    policies = {row["trigger_name"]: (row["overlap"], row["allow_concurrent"])
                for row in second.list_schedules()}
    assert policies == {"orders": ("buffer_all", False), "files": ("allow", True)}
    now = T0 + 100
    assert first.record_fire(keyed_fire("k-1", 1), claim=True, now=now, deadline=now + QUEUED)
    assert second.record_fire(keyed_fire("k-0", 0), claim=True, now=now, deadline=now + QUEUED) is False
    assert second.get_execution("k-1")["dedup_hash"] == KEY
    waiting = [
        PendingFire(f"p-{n}", "orders", KEY, {**CONTEXT, "seen": n}, f"{n:064d}", now + n) for n in (2, 3)
    ]
    held = second.hold_pending(waiting[0], replace=False, max_pending=5)
    assert held == Held("pending", "k-1", ("k-1-task",))
    assert first.hold_pending(waiting[1], replace=False, max_pending=5).status == "pending"
    assert first.pending_fires("orders") == second.pending_fires("orders") == waiting
    assert first.orphan_pending(10) == []
    assert first.finish_execution("k-1", "succeeded", None, D0 + timedelta(seconds=101))
    assert second.orphan_pending(10) == [("orders", KEY)]
    assert second.next_pending("orders", KEY) == waiting[0]
    assert second.start_pending("p-2", keyed_fire("k-2", 2), now=now + 5, deadline=now + 5 + QUEUED)
    assert first.start_pending("p-3", keyed_fire("k-3", 3), now=now + 5, deadline=now + 5 + QUEUED) is False
    assert first.get_execution("k-2")["dedup_hash"] == KEY
    assert (first.orphan_pending(10), first.next_pending("orders", KEY)) == ([], waiting[1])


def django_database_url() -> URL:
    """The Django test database, as an SQLAlchemy URL."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return URL.create("sqlite", database=settings["NAME"])
    return URL.create(
        "postgresql+psycopg", username=settings["USER"], host=settings["HOST"],
        port=int(settings["PORT"]), database=settings["NAME"],
    )


@pytest.fixture
def django_tables_engine() -> Iterator[Engine]:
    engine = create_engine(django_database_url())
    yield engine
    engine.dispose()


def include_cloaca(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Only the cloaca tables; not the ``*_like`` indexes Django adds on PostgreSQL (docs/design.md)."""
    if type_ == "table":
        return bool(name and name.startswith("cloaca_"))
    return not (type_ == "index" and reflected and compare_to is None and str(name).endswith("_like"))


DECLARED_APART = {
    # Django declares real and text where SQLAlchemy declares DOUBLE and JSON: the same values.
    "sqlite": {(sqltypes.REAL, sqltypes.Double), (sqltypes.TEXT, sqltypes.JSON)},
    # Django's JSONField is jsonb; the SQL store's JSON columns are json.
    "postgresql": {(postgresql.JSONB, sqltypes.JSON)},
}
"""The column types (found in Django's tables, declared in sqlschema) that docs/design.md lists."""


def compare_type(
    context: Any, column: Any, metadata_column: Any, found: Any, expected: Any
) -> bool | None:
    """``False`` (no difference) for the pairs of :data:`DECLARED_APART`; anything else as usual."""
    if (type(found), type(expected)) in DECLARED_APART.get(context.dialect.name, set()):
        return False
    return None


@pytest.mark.django_db
def test_alembic_finds_nothing_to_change_in_the_tables_django_made(django_tables_engine: Engine) -> None:
    with django_tables_engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": compare_type, "include_object": include_cloaca}
        )
        assert compare_metadata(context, metadata) == []


@pytest.mark.django_db(transaction=True)
def test_the_sql_store_works_on_the_tables_django_made(django_tables_engine: Engine) -> None:
    from django_cloaca.store import DjangoStore

    hand_over(SqlStore(django_tables_engine), DjangoStore())


@contextmanager
def django_database(path: Path) -> Iterator[str]:
    """A Django database alias for the SQLite file at ``path``, for as long as the block runs."""
    from django.db import connections

    alias = new_name()
    connections.settings[alias] = {
        **connections.settings["default"], "ENGINE": "django.db.backends.sqlite3", "NAME": str(path),
        "OPTIONS": {},
    }
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


def test_the_django_store_works_on_the_tables_alembic_made(tmp_path: Path, django_db_blocker: Any) -> None:
    from django_cloaca.store import DjangoStore

    path = tmp_path / "alembic.db"
    store = SqlStore(f"sqlite:///{path}")
    store.ensure_schema()
    try:
        with django_db_blocker.unblock(), django_database(path) as alias:
            hand_over(DjangoStore(alias), store)
    finally:
        store.close()
