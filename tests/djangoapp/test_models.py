"""django_cloaca's models, migrations and the DjangoStore as the engine's store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command

from cloaca_celery.installation import get_installation
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
