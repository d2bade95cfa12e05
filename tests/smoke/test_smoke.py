"""The smoke test: the whole path once, on the dependencies installed here.

A trigger fires a two-step workflow through a real ``celery worker`` and
``celery beat`` on Redis, with the Django store on the test's database, and
the Django admin lists the trigger and its succeeded execution. It runs in the
main suite and in every session of the version matrix (``make test-matrix``,
``noxfile.py``), so each supported Celery, kombu, Django, SQLAlchemy and
Python gets the end-to-end path, not only the unit tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from django_cloaca.models import TriggerExecution, TriggerSchedule
from tests.e2e.harness import CeleryProject, wait_until

pytestmark = [pytest.mark.smoke, pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _database_settings() -> str:
    """The test database's settings, for the worker and beat to use the same database."""
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    return json.dumps({key: connection.settings_dict[key] for key in keys if key in connection.settings_dict})


def test_a_trigger_fires_a_two_step_workflow_through_worker_and_beat_and_the_admin_lists_it(
    redis_url: str, redis_client: Any, launch: Any,
) -> None:
    project: CeleryProject = launch(
        "tests.smoke.smoke_app",
        SMOKE_REDIS_URL=redis_url,
        SMOKE_DJANGO_DATABASE=_database_settings(),
        DJANGO_SETTINGS_MODULE="tests.smoke.settings",
    )
    worker = project.worker(concurrency=2)
    beat = project.beat()
    worker.wait_for_log("ready", timeout=60)
    beat.wait_for_log("beat: Starting", timeout=60)

    redis_client.rpush("smoke:orders", "A-1")

    def finished() -> list[TriggerExecution]:
        return list(TriggerExecution.objects.filter(trigger_name="smoke_orders", status="succeeded"))

    done = wait_until(finished, 60, "the smoke_orders execution to succeed", project)
    steps = [json.loads(step) for step in redis_client.lrange("smoke:steps", 0, -1)]
    assert steps == [
        {"step": "reserve", "order": "A-1"},
        {"step": "ship", "order": "A-1", "reserved": True},
    ]
    assert len(done) == 1 and done[0].workflow == "smoke_fulfil" and done[0].context == {"order": "A-1"}
    assert TriggerSchedule.objects.get(pk="smoke_orders").enabled is True

    admin = Client()
    admin.force_login(User.objects.create_superuser("smoke", "smoke@example.com", "pw-smoke"))
    triggers_page = admin.get(reverse("admin:django_cloaca_triggerschedule_changelist"))
    assert triggers_page.status_code == 200 and b"smoke_orders" in triggers_page.content
    executions_page = admin.get(reverse("admin:django_cloaca_triggerexecution_changelist"))
    assert executions_page.status_code == 200
    assert b"smoke_orders" in executions_page.content and b"succeeded" in executions_page.content
    assert str(done[0].execution_id).encode() in executions_page.content
