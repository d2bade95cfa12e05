"""The shop's Celery app: configured from Django settings, triggers from every app's tasks.py."""

from __future__ import annotations

import os

from celery import Celery

import cloaca_celery as cloaca

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
cloaca.install(app)
