"""An app that installs cloaca but defines no trigger (its triggers were never imported)."""

from __future__ import annotations

import os

from celery import Celery

import cloaca_celery as cloaca

app = Celery("e2e_empty", broker=os.environ["E2E_REDIS_URL"])
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"])
