"""Fixtures for the Django app's tests: users with and without permissions, schedule rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from cloaca_celery.triggers import triggers
from django_cloaca.store import DjangoStore
from tests.django_project import triggers as project_triggers


@pytest.fixture
def store(db: None) -> DjangoStore:
    """The Django store with a schedule row for every trigger of the test project."""
    s = DjangoStore()
    s.ensure_schema()
    s.sync_triggers([d.spec() for d in triggers], time.time(), prune=False)
    return s


@pytest.fixture
def switches() -> Iterator[dict[str, Any]]:
    saved = dict(project_triggers.SWITCHES)
    yield project_triggers.SWITCHES
    project_triggers.SWITCHES.clear()
    project_triggers.SWITCHES.update(saved)


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-root")


@pytest.fixture
def viewer(db: None) -> User:
    return _staff("viewer", "view_triggerschedule", "view_triggerexecution")


@pytest.fixture
def changer(db: None) -> User:
    return _staff("changer", "view_triggerschedule", "change_triggerschedule", "view_triggerexecution")


@pytest.fixture
def bare_staff(db: None) -> User:
    return _staff("bare")


@pytest.fixture(scope="session", autouse=True)
def _database_service() -> None:
    """With CLOACA_TEST_DJANGO_DB=postgresql, PostgreSQL must answer (fail in CI, skip on a laptop)."""
    import os

    from tests.support.services import need_postgres

    if os.environ.get("CLOACA_TEST_DJANGO_DB") == "postgresql":
        need_postgres()


@pytest.fixture(autouse=True)
def _no_health_counts_across_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tests' own eager polls are counted in this process; its health thread would write them on
    a connection of its own, committed beside the test's transaction, into later tests' charts. So
    here they are never written, and dropped after each test (the health tests save rows themselves)."""
    from cloaca_celery.binding import runtime_of
    from tests.django_project.celery_app import app

    runtime = runtime_of(app)
    if runtime is None:
        yield
        return
    runtime.health.discard()
    monkeypatch.setattr(runtime.health, "_write", lambda process, rows: None)
    yield
    runtime.health.discard()
