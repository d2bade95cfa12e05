"""An app whose trigger names a workflow nobody registered: start-up must refuse it."""

from __future__ import annotations

import os

from celery import Celery

import cloaca_celery as cloaca

app = Celery("e2e_orphan", broker=os.environ["E2E_REDIS_URL"])
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"])


@cloaca.trigger(workflow="no_such_workflow", poll_interval="1s")
def orphan() -> bool:
    return False
