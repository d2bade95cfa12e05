"""The smoke test's project: Django with ``django_cloaca``, a Celery app on Redis, one trigger
and a two-step workflow.

``SMOKE_REDIS_URL`` is the broker, result backend and the list the trigger
reads (``smoke:orders``: each pushed order fires once) and the steps report
to (``smoke:steps``).
"""

from __future__ import annotations

import json
import os

import django
import redis
from celery import Celery

import cloaca_celery as cloaca

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.smoke.settings")
django.setup()

REDIS_URL = os.environ["SMOKE_REDIS_URL"]
app = Celery("smoke_app", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(app, store="django")
r = redis.Redis.from_url(REDIS_URL)


@cloaca.task(id="smoke_reserve")
def reserve(context: cloaca.Context) -> cloaca.Context:
    r.rpush("smoke:steps", json.dumps({"step": "reserve", "order": context["order"]}))
    context["reserved"] = True
    return context


@cloaca.task(id="smoke_ship", dependencies=["smoke_reserve"])
def ship(context: cloaca.Context) -> None:
    r.rpush("smoke:steps", json.dumps(
        {"step": "ship", "order": context["order"], "reserved": context["reserved"]}
    ))


with cloaca.WorkflowBuilder("smoke_fulfil") as builder:
    builder.description("reserve, then ship")
    builder.add_task(reserve)
    builder.add_task(ship)


@cloaca.trigger(workflow="smoke_fulfil", poll_interval="500ms")
def smoke_orders() -> cloaca.TriggerResult:
    order = r.lpop("smoke:orders")
    if order is None:
        return cloaca.TriggerResult.skip()
    return cloaca.TriggerResult.fire(cloaca.Context({"order": order.decode()}))
