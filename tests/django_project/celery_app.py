"""The test project's Celery app, configured from Django settings the usual way."""

from __future__ import annotations

from celery import Celery

import cloaca_celery as cloaca

app = Celery("django_project", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
cloaca.install(app)

from . import triggers  # noqa: E402,F401 - registers the project's triggers and workflows
