"""The Alembic migrations shipped in cloaca_celery/migrations, on every backend.

Each test starts from an empty database (``backend`` in ``conftest.py``) and
migrates it with the engine cloaca itself uses (``SqlStore(...).engine``).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    event,
    inspect,
    text,
)

from cloaca_celery.migrations import VERSION_TABLE, alembic_config, current_revision, head_revision, upgrade
from cloaca_celery.sqlschema import UTCDateTime, metadata
from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import ACTIVE_STATUSES, Held, NewExecution, PendingFire, TriggerSpec, claim_key
from tests.contract.conftest import Backend

CLOACA_TABLES = {
    "cloaca_schedules", "cloaca_executions", "cloaca_claims", "cloaca_steps", "cloaca_pending",
    "cloaca_health_minutes",
}
AT_0007 = CLOACA_TABLES - {"cloaca_health_minutes"} | {"cloaca_health"}
TABLES_AT = {
    "0001": {"cloaca_schedules"},
    "0002": {"cloaca_schedules", "cloaca_executions", "cloaca_claims"},
    "0003": {"cloaca_schedules", "cloaca_executions", "cloaca_claims"},
    "0004": {"cloaca_schedules", "cloaca_executions", "cloaca_claims", "cloaca_steps"},
    "0005": AT_0007 - {"cloaca_health"},
    "0006": AT_0007 - {"cloaca_health"},
    "0007": AT_0007,
    "0008": CLOACA_TABLES,
}


def schema_diff(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the database match ``sqlschema.metadata``."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, metadata))


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_head_is_0008() -> None:
    assert head_revision() == "0008"


def test_fresh_database_at_head_matches_the_metadata(backend: Backend) -> None:
    engine = backend.store().engine
    upgrade(engine)
    assert revision_of(engine) == head_revision()
    assert table_names(engine) == CLOACA_TABLES | {VERSION_TABLE}
    assert schema_diff(engine) == []


def test_indexes_of_head(backend: Backend) -> None:
    engine = backend.store().engine
    upgrade(engine)
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        expected = {index.name: [c.name for c in index.columns] for index in table.indexes}
        found = {
            index["name"]: index["column_names"]
            for index in inspector.get_indexes(table.name)
            if index["name"] in expected
        }
        assert found == expected, table.name
        primary = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert primary == [c.name for c in table.primary_key.columns], table.name


def _insert_0001_schedule(
    engine: Engine, dialect: str, name: str = "legacy", concurrent: bool = False
) -> None:
    """A schedule row as revision 0001 knew it, written with plain SQL."""
    # SQLAlchemy's storage format on SQLite; naive UTC on MySQL/MariaDB; timestamptz on PostgreSQL.
    stamp = "2025-11-28 12:00:34.250000" + ("+00:00" if dialect == "postgresql" else "")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO cloaca_schedules (trigger_name, workflow, poll_interval, allow_concurrent,"
                " enabled, registered, next_poll_at, consecutive_errors, last_error, state, state_version,"
                " created_at, updated_at, last_poll_at)"
                " VALUES (:name, :workflow, :interval, :concurrent, :enabled, :registered, :next_poll_at,"
                " :errors, :last_error, :state, :version, :stamp, :stamp, :stamp)"
            ),
            {
                "name": name, "workflow": "ship", "interval": 5.0, "concurrent": concurrent,
                "enabled": False, "registered": True, "next_poll_at": 1_764_331_200.0, "errors": 2,
                "last_error": "ValueError: old", "state": '{"cursor": 41}', "version": 3, "stamp": stamp,
            },
        )


def test_upgrade_from_0001_keeps_rows_and_adds_dedup_count(backend: Backend) -> None:
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0001")
    assert revision_of(engine) == "0001"
    assert table_names(engine) == {"cloaca_schedules", VERSION_TABLE}
    _insert_0001_schedule(engine, engine.dialect.name)

    upgrade(engine)
    assert revision_of(engine) == head_revision()
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        count, dedup = conn.execute(text("SELECT COUNT(*), MAX(dedup_count) FROM cloaca_schedules")).one()
    assert (count, dedup) == (1, 0)

    row = store.get_schedule("legacy")
    assert (row["workflow"], row["poll_interval"]) == ("ship", 5.0)
    assert (row["enabled"], row["registered"]) == (False, True)
    assert (row["consecutive_errors"], row["last_error"]) == (2, "ValueError: old")
    assert row["state"] == {"cursor": 41}
    assert row["dedup_count"] == 0
    assert row["last_poll_at"] == datetime(2025, 11, 28, 12, 0, 34, 250_000, tzinfo=timezone.utc)
    assert row["created_at"] == row["last_poll_at"]
    store.set_enabled("legacy", True)
    assert store.get_schedule("legacy")["enabled"] is True


def _insert_execution(
    conn: Connection, execution_id: str, context_hash: str, status: str = "running"
) -> None:
    """An execution as revisions 0002 and 0003 knew it, written with plain SQL (ended when it started
    if ``status`` is final)."""
    stamp = "2025-11-28 12:00:34.250000" + ("+00:00" if conn.dialect.name == "postgresql" else "")
    conn.execute(
        text(
            "INSERT INTO cloaca_executions (execution_id, trigger_name, workflow, context, context_hash,"
            " status, task_ids, started_at, completed_at) VALUES (:id, 'orders', 'ship', :context, :hash,"
            " :status, '[\"t1\"]', :stamp, :completed)"
        ),
        {
            "id": execution_id, "context": '{"order": 7, "lines": [1, 2]}', "hash": context_hash,
            "status": status, "stamp": stamp, "completed": None if status in ACTIVE_STATUSES else stamp,
        },
    )


def _insert_0002_claim(engine: Engine, execution_id: str, context_hash: str) -> None:
    """An active execution and its claim as revision 0002 knew them, written with plain SQL."""
    with engine.begin() as conn:
        _insert_execution(conn, execution_id, context_hash)
        conn.execute(
            text(
                "INSERT INTO cloaca_claims (trigger_name, context_hash, execution_id, claimed_at, expires_at)"
                " VALUES ('orders', :hash, :id, 1764331234.5, 1764334834.5)"
            ),
            {"id": execution_id, "hash": context_hash},
        )


def _fire(store: SqlStore, execution_id: str, context_hash: str, dedup_hash: str = "") -> bool:
    execution = NewExecution(
        execution_id, "orders", "ship", {"order": 7, "lines": [1, 2]}, context_hash, ["t2"],
        datetime(2025, 11, 28, 12, 1, tzinfo=timezone.utc), dedup_hash,
    )
    return store.record_fire(execution, claim=True, now=1_764_331_300.0, deadline=1_764_331_900.0)


def test_upgrade_from_0002_keeps_the_claims_held(backend: Backend) -> None:
    """0003 re-keys claims by ``claim_key``: a claim held before still keeps its context from firing twice."""
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0002")
    held, other = "a" * 64, "b" * 64
    _insert_0002_claim(engine, "e-held", held)
    _insert_0002_claim(engine, "e-other", other)

    upgrade(engine)
    assert revision_of(engine) == head_revision()
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT claim_key, trigger_name, context_hash, execution_id, claimed_at"
            " FROM cloaca_claims ORDER BY execution_id"
        )).all()
    assert [tuple(row) for row in rows] == [
        (claim_key("orders", held), "orders", held, "e-held", 1_764_331_234.5),
        (claim_key("orders", other), "orders", other, "e-other", 1_764_331_234.5),
    ]
    assert store.get_execution("e-held")["context"] == {"order": 7, "lines": [1, 2]}

    assert _fire(store, "e-second", held) is False
    assert store.finish_execution("e-held", "succeeded", None, datetime.now(timezone.utc)) is True
    assert _fire(store, "e-second", held) is True
    assert _fire(store, "e-third", other) is False
    with engine.connect() as conn:
        holders = conn.execute(text("SELECT execution_id FROM cloaca_claims ORDER BY execution_id")).scalars()
        assert holders.all() == ["e-other", "e-second"]


def test_downgrade_from_0003_keeps_the_claims_held(backend: Backend) -> None:
    engine = backend.store().engine
    upgrade(engine, "0002")
    _insert_0002_claim(engine, "e-held", "a" * 64)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert revision_of(engine) == "0002"
    assert inspect(engine).get_pk_constraint("cloaca_claims")["constrained_columns"] == [
        "trigger_name", "context_hash"
    ]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM cloaca_claims")).all()
    assert [tuple(row) for row in rows] == [("orders", "a" * 64, "e-held", 1_764_331_234.5, 1_764_334_834.5)]
    upgrade(engine)
    assert schema_diff(engine) == []


def _insert_0003_execution(engine: Engine, execution_id: str, status: str, context_hash: str) -> None:
    """An execution as revision 0003 knew it, with its claim while it is active, in plain SQL."""
    with engine.begin() as conn:
        _insert_execution(conn, execution_id, context_hash, status)
        if status in ACTIVE_STATUSES:
            conn.execute(
                text(
                    "INSERT INTO cloaca_claims (claim_key, trigger_name, context_hash, execution_id,"
                    " claimed_at, expires_at) VALUES (:key, 'orders', :hash, :id, 1764331234.5, 1764334834.5)"
                ),
                {"key": claim_key("orders", context_hash), "id": execution_id, "hash": context_hash},
            )


def test_upgrade_from_0003_gives_the_active_executions_a_deadline(backend: Backend) -> None:
    """0004: active executions are looked at a minute after the migration (store clock); claims stay held."""
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0003")
    hashes = {"e-running": "a" * 64, "e-queued": "b" * 64, "e-done": "c" * 64, "e-failed": "d" * 64}
    statuses = {"e-running": "running", "e-queued": "queued", "e-done": "succeeded", "e-failed": "failed"}
    for execution_id, status in statuses.items():
        _insert_0003_execution(engine, execution_id, status, hashes[execution_id])

    before = store.now()
    upgrade(engine)
    after = store.now()
    assert revision_of(engine) == head_revision()
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        rows = {row[0]: tuple(row[1:]) for row in conn.execute(
            text("SELECT execution_id, deadline_at, ending_status FROM cloaca_executions")
        )}
    for execution_id in ("e-running", "e-queued"):
        deadline, ending = rows[execution_id]
        assert before + 60 <= deadline <= after + 60
        assert ending is None
    assert (rows["e-done"], rows["e-failed"]) == ((None, None), (None, None))
    assert {column["name"] for column in inspect(engine).get_columns("cloaca_claims")} == {
        "claim_key", "trigger_name", "context_hash", "execution_id", "claimed_at"
    }

    assert store.sweep_candidates(before + 59, 10) == []
    overdue = store.sweep_candidates(after + 61, 10)
    assert [row["execution_id"] for row in overdue] == ["e-queued", "e-running"]
    assert _fire(store, "e-second", hashes["e-running"]) is False  # still held by its execution
    assert _fire(store, "e-third", hashes["e-done"]) is True
    assert store.start_step("e-running", "t1", after, after + 30) is True
    assert store.end_overdue("e-queued", "lost", "no step started", after + 61) is True
    assert _fire(store, "e-fourth", hashes["e-queued"]) is True


def test_downgrade_from_0004_gives_the_claims_held_an_expiry(backend: Backend) -> None:
    store = backend.store()
    engine = store.engine
    upgrade(engine)
    assert _fire(store, "e-held", "a" * 64) is True  # claimed at 1_764_331_300.0
    assert store.start_step("e-held", "t1", 1_764_331_301.0, 1_764_331_331.0) is True
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    assert revision_of(engine) == "0003"
    assert table_names(engine) == TABLES_AT["0003"] | {VERSION_TABLE}
    assert not {"deadline_at", "ending_status"} & {
        column["name"] for column in inspect(engine).get_columns("cloaca_executions")
    }
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT execution_id, claimed_at, expires_at FROM cloaca_claims")).all()
    assert [tuple(row) for row in rows] == [("e-held", 1_764_331_300.0, 1_764_331_300.0 + 6 * 3600)]
    upgrade(engine)
    assert schema_diff(engine) == []


def _insert_0004_execution(engine: Engine, execution_id: str, status: str, context_hash: str) -> None:
    """An execution as revision 0004 knew it, with its claim (no expiry) while it is active, in plain SQL."""
    with engine.begin() as conn:
        _insert_execution(conn, execution_id, context_hash, status)
        if status in ACTIVE_STATUSES:
            conn.execute(
                text("UPDATE cloaca_executions SET deadline_at = 1764331900.0 WHERE execution_id = :id"),
                {"id": execution_id},
            )
            conn.execute(
                text(
                    "INSERT INTO cloaca_claims (claim_key, trigger_name, context_hash, execution_id,"
                    " claimed_at) VALUES (:key, 'orders', :hash, :id, 1764331234.5)"
                ),
                {"key": claim_key("orders", context_hash), "id": execution_id, "hash": context_hash},
            )


def _pending(pending_id: str, dedup_hash: str, seen: int) -> PendingFire:
    context = {"order": 7, "seen": seen}
    return PendingFire(pending_id, "orders", dedup_hash, context, f"{seen:064d}", 1_764_331_400.0)


def test_upgrade_from_0004_gives_each_schedule_its_policy_and_keeps_executions_and_claims(
    backend: Backend,
) -> None:
    """0005: a concurrent trigger's policy is ``allow``, the others ``skip``; executions already there
    are keyed by their context hash, which their claims hold: they keep holding it."""
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0004")
    _insert_0001_schedule(engine, engine.dialect.name, "orders", concurrent=False)
    _insert_0001_schedule(engine, engine.dialect.name, "files", concurrent=True)
    _insert_0004_execution(engine, "e-running", "running", "a" * 64)
    _insert_0004_execution(engine, "e-done", "succeeded", "b" * 64)

    upgrade(engine)
    assert revision_of(engine) == head_revision()
    assert schema_diff(engine) == []
    schedules = {row["trigger_name"]: row for row in store.list_schedules()}
    assert {name: (row["overlap"], row["allow_concurrent"]) for name, row in schedules.items()} == {
        "orders": ("skip", False), "files": ("allow", True)
    }
    # What the code says is what the migration wrote: a sync changes neither row.
    store.sync_triggers([TriggerSpec("orders", "ship", 5.0), TriggerSpec("files", "ship", 5.0, True)], 1e10)
    assert {row["trigger_name"]: row["updated_at"] for row in store.list_schedules()} == {
        name: row["updated_at"] for name, row in schedules.items()
    }
    with engine.connect() as conn:
        unkeyed = conn.execute(text("SELECT COUNT(*) FROM cloaca_executions WHERE dedup_hash IS NULL"))
        assert unkeyed.scalar() == 2
    assert store.get_execution("e-running")["dedup_hash"] == "a" * 64
    assert store.get_execution("e-done")["dedup_hash"] == "b" * 64

    assert _fire(store, "e-again", "a" * 64) is False  # still held by its execution
    assert _fire(store, "e-other", "f" * 64, dedup_hash="a" * 64) is False  # the work key is that hash
    held = store.hold_pending(_pending("p-1", "a" * 64, 1), replace=False, max_pending=10)
    assert held == Held("pending", "e-running", ("t1",))
    assert store.finish_execution("e-running", "succeeded", None, datetime.now(timezone.utc)) is True
    assert store.next_pending("orders", "a" * 64) == _pending("p-1", "a" * 64, 1)
    assert store.start_pending("p-1", NewExecution(
        "e-pending", "orders", "ship", {"order": 7, "seen": 1}, f"{1:064d}", ["t3"],
        datetime(2025, 11, 28, 12, 2, tzinfo=timezone.utc), "a" * 64,
    ), now=1_764_331_500.0, deadline=1_764_332_100.0) is True
    assert _fire(store, "e-third", "b" * 64) is True


def test_downgrade_from_0005_drops_pending_fires_and_keys_claims_by_context_again(backend: Backend) -> None:
    store = backend.store()
    engine = store.engine
    upgrade(engine)
    assert _fire(store, "e-keyed", "a" * 64, dedup_hash="k" * 64) is True
    assert _fire(store, "e-plain", "b" * 64) is True
    assert _fire(store, "e-old-key", "c" * 64) is True  # context c claimed as its own key...
    assert _fire(store, "e-new-key", "c" * 64, dedup_hash="m" * 64) is True  # ...and under a new key
    assert store.hold_pending(_pending("p-1", "k" * 64, 1), replace=False, max_pending=10).status == "pending"
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert revision_of(engine) == "0004"
    assert table_names(engine) == TABLES_AT["0004"] | {VERSION_TABLE}
    assert "dedup_hash" not in {column["name"] for column in inspect(engine).get_columns("cloaca_executions")}
    assert "overlap" not in {column["name"] for column in inspect(engine).get_columns("cloaca_schedules")}
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT claim_key, context_hash, execution_id FROM cloaca_claims ORDER BY execution_id"
        )).all()
    assert [tuple(row) for row in rows] == [
        (claim_key("orders", "a" * 64), "a" * 64, "e-keyed"),
        (claim_key("orders", "c" * 64), "c" * 64, "e-old-key"),
        (claim_key("orders", "b" * 64), "b" * 64, "e-plain"),
    ]
    upgrade(engine)
    assert schema_diff(engine) == []
    assert _fire(store, "e-again", "a" * 64) is False  # the downgraded claim kept holding the context


def test_upgrade_from_0005_adds_empty_pause_columns_and_a_downgrade_drops_them(backend: Backend) -> None:
    """0006: the rows there are keep what they had; a trigger disabled before has no pause recorded."""
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0005")
    _insert_0001_schedule(engine, engine.dialect.name, "orders", concurrent=False)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cloaca_schedules SET enabled = :off"), {"off": False})
    upgrade(engine)
    assert schema_diff(engine) == []
    row = store.get_schedule("orders")
    assert [row[k] for k in ("enabled", "paused_at", "paused_by", "pause_note")] == [False, None, None, None]
    store.set_enabled("orders", False, note="supplier API down", by="ops")
    assert store.get_schedule("orders")["pause_note"] == "supplier API down"
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0005")
    columns = {column["name"] for column in inspect(engine).get_columns("cloaca_schedules")}
    assert not {"paused_at", "paused_by", "pause_note"} & columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT enabled FROM cloaca_schedules")).scalar() in (False, 0)
    upgrade(engine)
    assert store.get_schedule("orders")["paused_at"] is None


def _per_trigger_health() -> Table:
    """``cloaca_health`` as revision 0007 made it (a row per trigger, minute and process)."""
    counts = ("polls", "skips", "fires", "held_skip", "held_buffer_one", "held_buffer_all",
              "held_cancel_other", "held_terminate_other", "pending", "cancelled", "dropped", "errors",
              "late")
    return Table(
        "cloaca_health", MetaData(),
        Column("health_key", String(320), primary_key=True), Column("trigger_name", String(200)),
        Column("minute", UTCDateTime), Column("process", String(100)),
        *(Column(name, Integer) for name in counts),
        Column("poll_buckets", JSON), Column("poll_seconds_sum", Double), Column("poll_seconds_max", Double),
        Column("latency_buckets", JSON), Column("latency_seconds_sum", Double),
        Column("latency_seconds_max", Double), Column("last_poll_at", UTCDateTime),
    )


def test_upgrade_from_0007_keeps_the_health_counts_a_row_per_minute_process_and_group(
    backend: Backend,
) -> None:
    """0008: the per-trigger rows of 0007 become one row per (minute, process, group), their counts kept."""
    store = backend.store()
    engine = store.engine
    upgrade(engine, "0007")
    minute = datetime(2025, 11, 28, 12, 0, tzinfo=timezone.utc)
    names = ["orders", "reports", "café ☕", "a" * 200]
    zero = dict.fromkeys(("held_skip", "held_buffer_one", "held_buffer_all", "held_cancel_other",
                          "held_terminate_other", "pending", "cancelled", "dropped", "errors", "late"), 0)
    rows = [
        {"health_key": f"{i}-{process}-{n}", "trigger_name": name, "minute": minute + timedelta(minutes=n),
         "process": process, "polls": 3 + i, "skips": 2 + i, "fires": 1, **zero,
         "poll_buckets": [0, 2 + i, 1], "poll_seconds_sum": 0.01, "poll_seconds_max": 0.004 + n,
         "latency_buckets": [], "latency_seconds_sum": 0.0, "latency_seconds_max": 0.0,
         "last_poll_at": minute + timedelta(minutes=n, seconds=10 + i)}
        for i, name in enumerate(names) for process in ("host-a:1:aa", "host-b:2:bb") for n in (0, 1)
    ]
    with engine.begin() as conn:
        conn.execute(_per_trigger_health().insert(), rows)
    upgrade(engine)
    assert schema_diff(engine) == []
    assert table_names(engine) == CLOACA_TABLES | {VERSION_TABLE}
    found = store.health(None, minute)
    assert sorted((row.trigger_name, row.minute, row.polls, row.skips, row.fires) for row in found) == sorted(
        (name, minute + timedelta(minutes=n), 2 * (3 + i), 2 * (2 + i), 2)
        for i, name in enumerate(names) for n in (0, 1)
    )
    orders = store.health("orders", minute + timedelta(minutes=1))
    assert [(row.poll_seconds.count, row.poll_seconds.largest) for row in orders] == [
        (6, pytest.approx(1.004)),
    ]
    assert store.last_polls()["reports"] == minute + timedelta(minutes=1, seconds=11)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM cloaca_health_minutes")).scalar() <= 2 * 2 * len(names)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
    assert table_names(engine) == AT_0007 | {VERSION_TABLE}
    upgrade(engine)
    assert store.health(None, minute) == []


def test_upgrade_twice_is_a_no_op(backend: Backend) -> None:
    engine = backend.store().engine
    upgrade(engine)
    _insert_0001_schedule(engine, engine.dialect.name)

    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        upgrade(engine)
        upgrade(engine, "head")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    writes = [
        s for s in statements
        if s.lstrip().split(" ", 1)[0].upper() in ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")
    ]
    assert writes == []
    assert revision_of(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT trigger_name FROM cloaca_schedules")).scalars().all() == ["legacy"]


def test_ensure_schema_twice_is_a_no_op(backend: Backend) -> None:
    first, second = backend.store(), backend.store()
    first.ensure_schema()
    first.ensure_schema()
    second.ensure_schema()
    assert revision_of(first.engine) == head_revision()
    assert schema_diff(first.engine) == []


def test_concurrent_upgrades_of_a_fresh_database(backend: Backend) -> None:
    """Workers and beats start together: three upgrade() calls at once all succeed, once."""
    engines = [backend.store().engine for _ in range(3)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            barrier.wait(timeout=30)
            upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an upgrade hung"
    assert errors == []
    assert revision_of(engines[0]) == head_revision()
    assert schema_diff(engines[0]) == []
    with engines[0].connect() as conn:
        versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        assert versions == [head_revision()]


def test_version_is_kept_in_its_own_table(backend: Backend) -> None:
    engine = backend.store().engine
    upgrade(engine)
    names = table_names(engine)
    assert VERSION_TABLE in names
    assert "alembic_version" not in names
    with engine.connect() as conn:
        versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        assert versions == [head_revision()]


def test_the_projects_own_alembic_version_is_left_alone(backend: Backend) -> None:
    """A project that uses Alembic itself keeps its ``alembic_version`` untouched."""
    engine = backend.engine()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('project_rev_7')"))
    store_engine = backend.store().engine
    upgrade(store_engine)

    assert revision_of(store_engine) == head_revision()
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == ["project_rev_7"]
    assert table_names(engine) == CLOACA_TABLES | {VERSION_TABLE, "alembic_version"}


@pytest.mark.parametrize("target", sorted(TABLES_AT))
def test_upgrade_to_a_revision_stops_there(backend: Backend, target: str) -> None:
    engine = backend.store().engine
    upgrade(engine, target)
    assert revision_of(engine) == target
    assert table_names(engine) == TABLES_AT[target] | {VERSION_TABLE}


def test_mariadb_migration_lock_is_held_until_the_new_version_is_committed(mariadb_backend: Backend) -> None:
    """The second upgrader must not read the version until the first one's commit.

    The first upgrader's commit is held (an engine ``commit`` event) until the
    second upgrader has either read the version table after taking the lock
    (the bug) or is seen waiting for the lock in the process list (correct).
    """
    first, second = mariadb_backend.store().engine, mariadb_backend.store().engine
    watcher = mariadb_backend.engine()
    database = first.url.database
    upgrade(first, "0001")

    locked = threading.Event()
    read_version_under_lock = threading.Event()
    errors: list[BaseException] = []

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "GET_LOCK" in statement and "RELEASE_LOCK" not in statement:
            locked.set()
        elif locked.is_set() and VERSION_TABLE in statement and statement.lstrip()[:6].upper() == "SELECT":
            read_version_under_lock.set()

    event.listen(second, "after_cursor_execute", after_execute)

    def run_second() -> None:
        try:
            upgrade(second)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    racer = threading.Thread(target=run_second)

    def second_waits_for_the_lock() -> bool:
        with watcher.connect() as conn:
            return bool(conn.execute(
                text("SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                     " WHERE DB = :db AND STATE = 'User lock' AND INFO LIKE '%GET_LOCK%'"),
                {"db": database},
            ).scalar())

    def hold_commit(conn: Any) -> None:
        if racer.ident is not None:
            return
        racer.start()
        for _ in range(1500):  # at most ~30 s
            if read_version_under_lock.wait(0.02) or second_waits_for_the_lock():
                return
        raise AssertionError("the second upgrader neither read the version nor waited for the lock")

    event.listen(first, "commit", hold_commit)
    upgrade(first)
    racer.join(timeout=120)
    assert not racer.is_alive()
    assert errors == []
    assert revision_of(first) == head_revision()
