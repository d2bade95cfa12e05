"""django_cloaca's models, migrations and the DjangoStore as the engine's store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from cloaca_celery.errors import ConfigurationError
from cloaca_celery.installation import get_installation, make_store
from cloaca_celery.store import Held, NewExecution, PendingFire, claim_key
from django_cloaca.models import TriggerClaim, TriggerExecution, TriggerSchedule
from django_cloaca.store import DjangoStore
from tests.django_project.celery_app import app

pytestmark = pytest.mark.django_db


def test_migrations_match_the_models() -> None:
    call_command("makemigrations", "django_cloaca", "--check", "--dry-run", verbosity=0)


def test_tables_carry_the_sql_store_names(store: DjangoStore) -> None:
    assert TriggerSchedule._meta.db_table == "cloaca_schedules"
    assert TriggerExecution._meta.db_table == "cloaca_executions"
    assert {"invoice_watcher", "nightly_report"} <= set(TriggerSchedule.objects.values_list("pk", flat=True))


def test_the_engine_stores_through_django_when_the_app_is_installed() -> None:
    installation = get_installation(app)
    assert installation.settings.store == "auto"
    assert isinstance(installation.store, DjangoStore)


def test_the_store_refuses_a_project_with_use_tz_false() -> None:
    """Naive local datetimes would make the ages and ends of executions wrong: refuse, say what to set."""
    with override_settings(USE_TZ=False):
        with pytest.raises(ConfigurationError, match=r"needs USE_TZ = True .*Set USE_TZ = True"):
            DjangoStore()
        with pytest.raises(ConfigurationError, match="USE_TZ"):
            make_store(get_installation(app).settings)  # a worker or beat starting on such a project
    assert isinstance(DjangoStore(), DjangoStore)


@contextmanager
def migrated_back_to(migration: str) -> Iterator[Callable[[str], Any]]:
    """django_cloaca's tables as of ``migration``, with a function giving each model as it was then;
    migrated to the latest again after the block."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    migrate_to(migration)
    try:
        old = MigrationExecutor(connection).loader.project_state([("django_cloaca", migration)]).apps
        yield lambda name: old.get_model("django_cloaca", name)
    finally:
        migrate_to()


def migrate_to(migration: str | None = None) -> None:
    """Migrate django_cloaca to ``migration`` (``None``: the latest)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    target = executor.loader.graph.leaf_nodes("django_cloaca") if migration is None else [
        ("django_cloaca", migration)
    ]
    executor.migrate(target)


@pytest.mark.django_db(transaction=True)
def test_migration_0002_gives_the_active_executions_a_deadline_and_keeps_their_claims() -> None:
    with migrated_back_to("0001_initial") as old_model:
        started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        for n, status in enumerate(["running", "queued", "succeeded", "lost"]):
            old_model("TriggerExecution").objects.create(
                execution_id=f"e-{status}", trigger_name="invoice_watcher", workflow="django_invoices",
                context={"n": n}, context_hash=f"{n}" * 64, status=status, task_ids=[], started_at=started,
                completed_at=None if status in ("running", "queued") else started,
            )
        old_model("TriggerClaim").objects.create(
            claim_key=f"invoice_watcher\x1f{'0' * 64}", trigger_name="invoice_watcher", context_hash="0" * 64,
            execution_id="e-running", claimed_at=1.0, expires_at=2.0,
        )
        store = DjangoStore()
        before = store.now()
        migrate_to()
        after = store.now()

        deadlines = dict(TriggerExecution.objects.values_list("execution_id", "deadline_at"))
        for active in ("e-running", "e-queued"):
            assert before + 60 <= deadlines[active] <= after + 60
        assert (deadlines["e-succeeded"], deadlines["e-lost"]) == (None, None)
        overdue = store.sweep_candidates(after + 61, 10)
        assert [row["execution_id"] for row in overdue] == ["e-queued", "e-running"]
        fire = NewExecution("e-again", "invoice_watcher", "django_invoices", {"n": 0}, "0" * 64, [], started)
        assert store.record_fire(fire, claim=True, now=after, deadline=after + 600) is False


@pytest.mark.django_db(transaction=True)
def test_migration_0003_gives_each_schedule_its_policy_and_back_keys_claims_by_context() -> None:
    from django.db import connection

    with migrated_back_to("0002_leases") as old_model:
        stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        for name, concurrent in (("orders", False), ("files", True)):
            old_model("TriggerSchedule").objects.create(
                trigger_name=name, workflow="wf", poll_interval=5.0, allow_concurrent=concurrent,
                next_poll_at=1.0, created_at=stamp, updated_at=stamp,
            )
        old_model("TriggerExecution").objects.create(
            execution_id="e-running", trigger_name="orders", workflow="wf", context={"n": 1},
            context_hash="a" * 64, status="running", task_ids=["t1"], started_at=stamp, deadline_at=9.0,
        )
        old_model("TriggerClaim").objects.create(
            claim_key=claim_key("orders", "a" * 64), trigger_name="orders", context_hash="a" * 64,
            execution_id="e-running", claimed_at=1.0,
        )
        migrate_to()

        store = DjangoStore()
        policies = {row["trigger_name"]: (row["overlap"], row["allow_concurrent"])
                    for row in store.list_schedules()}
        assert policies == {"orders": ("skip", False), "files": ("allow", True)}
        assert TriggerExecution.objects.get(pk="e-running").dedup_hash is None
        assert store.get_execution("e-running")["dedup_hash"] == "a" * 64
        pending = PendingFire("p-1", "orders", "a" * 64, {"n": 1, "seen": 2}, "c" * 64, 5.0)
        held = store.hold_pending(pending, replace=False, max_pending=5)
        assert held == Held("pending", "e-running", ("t1",))
        keyed = NewExecution("e-keyed", "orders", "wf", {"n": 2}, "b" * 64, [], stamp, dedup_hash="k" * 64)
        assert store.record_fire(keyed, claim=True, now=10.0, deadline=610.0) is True

        migrate_to("0002_leases")
        assert sorted(TriggerClaim.objects.values_list("claim_key", "context_hash", "execution_id")) == [
            (claim_key("orders", "a" * 64), "a" * 64, "e-running"),
            (claim_key("orders", "b" * 64), "b" * 64, "e-keyed"),
        ]
        assert "cloaca_pending" not in connection.introspection.table_names()


def test_execution_duration_and_str(store: DjangoStore) -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    row = TriggerExecution.objects.create(
        execution_id="e" * 36, trigger_name="invoice_watcher", workflow="django_invoices",
        context={"invoice": 7}, context_hash="h" * 64, status="succeeded", task_ids=[],
        started_at=start, completed_at=start + timedelta(seconds=2.5),
    )
    assert row.duration == 2.5
    assert "invoice_watcher" in str(row) and "succeeded" in str(row)
    assert str(TriggerSchedule.objects.get(pk="invoice_watcher")) == "invoice_watcher"


@pytest.mark.django_db(transaction=True)
def test_migration_0006_keeps_the_health_counts_a_row_per_minute_process_and_group() -> None:
    minute = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    names = ["invoice_watcher", "nightly_report", "café ☕"]
    with migrated_back_to("0005_health") as old_model:
        for i, name in enumerate(names):
            for process in ("host-a:1:aa", "host-b:2:bb"):
                old_model("TriggerHealth").objects.create(
                    health_key=f"{i}-{process}", trigger_name=name, minute=minute, process=process,
                    polls=4 + i, skips=3 + i, fires=1, poll_buckets=[0, 4 + i], poll_seconds_sum=0.01,
                    poll_seconds_max=0.002, latency_buckets=[1], latency_seconds_sum=0.3,
                    latency_seconds_max=0.3, last_poll_at=minute + timedelta(seconds=10 + i),
                )
        migrate_to()
    store = DjangoStore()
    found = store.health(None, minute)
    assert sorted((row.trigger_name, row.polls, row.skips, row.fires, row.latency_seconds.count)
                  for row in found) == sorted(
        (name, 2 * (4 + i), 2 * (3 + i), 2, 2) for i, name in enumerate(names)
    )
    assert store.last_polls()["café ☕"] == minute + timedelta(seconds=12)
    from django_cloaca.models import HealthMinute

    assert HealthMinute.objects.count() <= 2 * len(names)
