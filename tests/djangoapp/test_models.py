"""django_cloaca's models, migrations and the DjangoStore as the engine's store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.test import override_settings

from cloaca_celery.errors import ConfigurationError
from cloaca_celery.installation import get_installation, make_store
from cloaca_celery.store import NewExecution
from django_cloaca.models import TriggerExecution, TriggerSchedule
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


@pytest.mark.django_db(transaction=True)
def test_migration_0002_gives_the_active_executions_a_deadline_and_keeps_their_claims() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before_leases = [("django_cloaca", "0001_initial")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("django_cloaca")
    executor.migrate(before_leases)
    try:
        old = executor.loader.project_state(before_leases).apps
        started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        for n, status in enumerate(["running", "queued", "succeeded", "lost"]):
            old.get_model("django_cloaca", "TriggerExecution").objects.create(
                execution_id=f"e-{status}", trigger_name="invoice_watcher", workflow="django_invoices",
                context={"n": n}, context_hash=f"{n}" * 64, status=status, task_ids=[], started_at=started,
                completed_at=None if status in ("running", "queued") else started,
            )
        old.get_model("django_cloaca", "TriggerClaim").objects.create(
            claim_key=f"invoice_watcher\x1f{'0' * 64}", trigger_name="invoice_watcher", context_hash="0" * 64,
            execution_id="e-running", claimed_at=1.0, expires_at=2.0,
        )
        store = DjangoStore()
        before = store.now()
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        after = store.now()

        deadlines = dict(TriggerExecution.objects.values_list("execution_id", "deadline_at"))
        for active in ("e-running", "e-queued"):
            assert before + 60 <= deadlines[active] <= after + 60
        assert (deadlines["e-succeeded"], deadlines["e-lost"]) == (None, None)
        overdue = store.sweep_candidates(after + 61, 10)
        assert [row["execution_id"] for row in overdue] == ["e-queued", "e-running"]
        fire = NewExecution("e-again", "invoice_watcher", "django_invoices", {"n": 0}, "0" * 64, [], started)
        assert store.record_fire(fire, claim=True, now=after, deadline=after + 600) is False
    finally:
        MigrationExecutor(connection).migrate(latest)


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
