"""django_cloaca's system checks, as ``manage.py check`` runs them (``run_checks``)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.checks import Warning as CheckWarning
from django.core.checks import run_checks
from django.test import override_settings

REPO = Path(__file__).resolve().parents[2]


def _ours(**overrides: Any) -> dict[str, CheckWarning]:
    with override_settings(**overrides):
        found = run_checks(tags=["django_cloaca"])
    return {message.id: message for message in found if message.id.startswith("django_cloaca.")}


def _databases(**options: Any) -> dict[str, Any]:
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"] = {**databases["default"], "OPTIONS": options}
    return databases


def test_the_test_project_passes_every_check() -> None:
    """Its SQLite has transaction_mode IMMEDIATE (Django 5.1+), as docs/django.md says; 4.2 cannot."""
    sqlite_42 = "sqlite" in settings.DATABASES["default"]["ENGINE"] and django.VERSION < (5, 1)
    assert set(_ours()) == ({"django_cloaca.W001"} if sqlite_42 else set())


@pytest.mark.skipif("sqlite" not in os.environ.get("CLOACA_TEST_DJANGO_DB", "sqlite"), reason="SQLite only")
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read, never connected to
def test_w001_sqlite_without_immediate_transactions() -> None:
    found = _ours(DATABASES=_databases(timeout=30))["django_cloaca.W001"]
    assert "database 'default' is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE'" in found.msg
    assert "database is locked" in found.msg
    if django.VERSION >= (5, 1):
        assert '"transaction_mode": "IMMEDIATE"' in (found.hint or "")
    else:
        assert "upgrade to Django 5.1" in (found.hint or "") and "--concurrency 1" in (found.hint or "")
    assert "django_cloaca.W001" not in _ours(DATABASES=_databases(transaction_mode="IMMEDIATE", timeout=30))
    assert "django_cloaca.W001" not in _ours(DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": "x"}})


def test_w002_use_tz_off() -> None:
    found = _ours(USE_TZ=False)["django_cloaca.W002"]
    assert "USE_TZ is not True" in found.msg and "USE_TZ = True" in (found.hint or "")
    assert "django_cloaca.W002" not in _ours(USE_TZ=True)


def test_w003_no_celery_app_for_poll_now() -> None:
    missing = _ours(CLOACA_CELERY_APP="tests.django_project.no_such_module.app")["django_cloaca.W003"]
    assert "CLOACA_CELERY_APP = 'tests.django_project.no_such_module.app' cannot be imported" in missing.msg
    not_installed = _ours(CLOACA_CELERY_APP="tests.djangoapp.test_checks.PLAIN_APP")["django_cloaca.W003"]
    assert "no Celery app with cloaca installed was found" in not_installed.msg
    assert "CLOACA_CELERY_APP = 'proj.celery.app'" in (not_installed.hint or "")
    assert "django_cloaca.W003" not in _ours()


def test_w004_preview_needs_a_result_backend() -> None:
    from tests.django_project.celery_app import app

    saved = (app.conf.result_backend, app.conf.task_always_eager)
    try:
        app.conf.task_always_eager = False
        app.conf.result_backend = None
        found = _ours()["django_cloaca.W004"]
        assert "has no result backend" in found.msg and "CELERY_RESULT_BACKEND" in (found.hint or "")
        app.conf.result_backend = "redis://127.0.0.1:6379/0"
        assert "django_cloaca.W004" not in _ours()
    finally:
        app.conf.result_backend, app.conf.task_always_eager = saved


@pytest.mark.slow  # runs manage.py
def test_manage_py_check_prints_them_with_their_ids(tmp_path: Path) -> None:
    """The test project passes; the same project with a deferred-transaction SQLite gets W001."""
    (tmp_path / "deferred_settings.py").write_text(
        "from tests.django_project.settings import *  # noqa: F403\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'x.sqlite3',"
        " 'OPTIONS': {'timeout': 30}}}\n"
    )
    env = {**os.environ, "CLOACA_TEST_DJANGO_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}

    def check(settings_module: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "django", "check"], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**env, "DJANGO_SETTINGS_MODULE": settings_module})
        assert done.returncode == 0, done.stderr
        return done

    if django.VERSION >= (5, 1):
        assert "django_cloaca" not in check("tests.django_project.settings").stderr
    deferred = check("deferred_settings").stderr
    assert "(django_cloaca.W001) database 'default' is SQLite" in deferred
    assert "W002" not in deferred and "W003" not in deferred


def _plain_app() -> Any:
    from celery import Celery

    return Celery("plain", set_as_current=False)


PLAIN_APP = _plain_app()
"""A Celery app cloaca is not installed on."""
