"""The shop's Celery app, configured from Django settings as docs/django.md shows.

``autodiscover_tasks()`` imports every app's tasks.py; ``install(app)`` imports its triggers.py.
"""

from __future__ import annotations

import os

from celery import Celery

import cloaca_celery as cloaca

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()        # every app's tasks.py
cloaca.install(app)             # ... and every app's triggers.py
