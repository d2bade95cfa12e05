"""Django system checks of django_cloaca (``manage.py check``), registered by the app's ``ready()``.

=====================  =============================================================
``django_cloaca.W001``  the database cloaca writes to is SQLite without
                        ``OPTIONS["transaction_mode"] = "IMMEDIATE"``
``django_cloaca.W002``  ``USE_TZ`` is not ``True`` (the store refuses to work)
``django_cloaca.W003``  no Celery app with cloaca installed is found for the admin's
                        "poll now" and "preview"
``django_cloaca.W004``  that app has no result backend: the admin's "preview" cannot
                        get its answer
=====================  =============================================================

Each is documented in ``docs/django.md``; silence one with
``SILENCED_SYSTEM_CHECKS``.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.core import checks
from django.db import router

TAG = "django_cloaca"

DOCS = "docs/django.md, 'System checks'"


def check_sqlite_transaction_mode(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W001: SQLite's default deferred transactions make concurrent writers fail at once."""
    from .models import TriggerSchedule

    alias = router.db_for_write(TriggerSchedule)
    database = settings.DATABASES.get(alias, {})
    if "sqlite" not in str(database.get("ENGINE", "")):
        return []
    mode = str((database.get("OPTIONS") or {}).get("transaction_mode", "")).upper()
    if mode == "IMMEDIATE":
        return []
    if django.VERSION >= (5, 1):
        hint = (f'add "transaction_mode": "IMMEDIATE" (and a "timeout", e.g. 30) to DATABASES[{alias!r}]'
                '["OPTIONS"], or use PostgreSQL or MySQL/MariaDB')
    else:
        hint = (f"Django {django.get_version()} has no transaction_mode option (it came in Django 5.1): "
                "upgrade to Django 5.1 or newer and set it, or use PostgreSQL or MySQL/MariaDB; "
                "with SQLite on this version run a single worker process (--concurrency 1) beside beat")
    return [checks.Warning(
        f"database {alias!r} is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE': when "
        "cloaca's workers and beat write at once, SQLite fails one of them with 'database is locked' "
        "instead of letting it wait",
        hint=hint, id="django_cloaca.W001",
    )]


def check_use_tz(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W002: the store keeps timezone-aware UTC times and refuses USE_TZ = False."""
    if settings.USE_TZ:
        return []
    return [checks.Warning(
        "USE_TZ is not True: django_cloaca keeps timezone-aware UTC times, and its store refuses to "
        "work (workers, beat, the admin's actions and 'celery cloaca' stop with an error)",
        hint="set USE_TZ = True in the Django settings (Django's default since 5.0)", id="django_cloaca.W002",
    )]


def check_celery_app(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W003 / W004: the Celery app the admin sends "poll now" and "preview" through."""
    from celery import current_app
    from django.utils.module_loading import import_string

    from cloaca_celery.binding import runtime_of

    dotted = getattr(settings, "CLOACA_CELERY_APP", None)
    if dotted:
        try:
            app = import_string(dotted)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: check must not crash
            return [checks.Warning(
                f"CLOACA_CELERY_APP = {dotted!r} cannot be imported: {type(exc).__name__}: {exc}",
                hint="set it to the dotted path of your Celery app, e.g. 'proj.celery.app'",
                id="django_cloaca.W003",
            )]
        where = f"CLOACA_CELERY_APP = {dotted!r}"
    else:
        app = current_app._get_current_object()
        where = f"Celery's current app ({getattr(app, 'main', None) or 'the default app'!r})"
    if runtime_of(app) is None:
        return [checks.Warning(
            f"no Celery app with cloaca installed was found for the admin's \"poll now\" and \"preview\": "
            f"{where} is not one (cloaca_celery.install(app) was not called on it)",
            hint="import your Celery app in proj/__init__.py as Celery's Django guide does "
                 "(from .celery import app as celery_app), or set CLOACA_CELERY_APP = 'proj.celery.app'",
            id="django_cloaca.W003",
        )]
    backend = app.conf.result_backend
    if not backend and not app.conf.task_always_eager:
        return [checks.Warning(
            f"the Celery app {app.main!r} has no result backend: the admin's \"preview\" waits for a "
            "worker's answer and cannot get one (poll now, enable and disable work)",
            hint="set CELERY_RESULT_BACKEND (e.g. 'redis://...' or 'django-db' with django-celery-results)",
            id="django_cloaca.W004",
        )]
    return []


def register() -> None:
    """Register the checks (once: ``checks.register`` keeps a set)."""
    checks.register(check_sqlite_transaction_mode, TAG)
    checks.register(check_use_tz, TAG)
    checks.register(check_celery_app, TAG)
