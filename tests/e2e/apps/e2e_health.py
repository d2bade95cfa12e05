"""The app of the health-count tests: triggers that note every poll's answer in Redis.

Broker and results: ``E2E_REDIS_URL``; store: ``E2E_DATABASE_URL``. While
``go`` exists in Redis:

* ``hc_mixed`` (every 300 ms) fires a new context on every third poll and skips
  the others, and raises on every seventh (``answers:hc_mixed`` gets ``skip``,
  ``fire`` or ``error`` per poll);
* ``hc_held`` (every 300 ms, ``overlap="buffer_one"``, ``dedup_key=["key"]``)
  fires the same work on every poll (``answers:hc_held`` gets ``fire``), into a
  workflow whose first step takes 1 s: most fires are held back.

Every first step pushes its execution id to ``firsts:<trigger>``. Without
``go`` the triggers skip without noting anything.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

import cloaca_celery as cloaca

REDIS_URL = os.environ["E2E_REDIS_URL"]

app = Celery("e2e_health", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"], sweep_interval="1s",
               health_flush_interval=os.environ.get("E2E_FLUSH", "1s"))
r = redis.Redis.from_url(REDIS_URL)


@cloaca.task()
def first(context: cloaca.Context) -> cloaca.Context:
    r.rpush(f"firsts:{context['trigger_name']}", context["execution_id"])
    time.sleep(float(context.get("sleep", 0)))
    return context


with cloaca.WorkflowBuilder("noted") as builder:
    builder.add_task(first)


@cloaca.trigger(workflow="noted", poll_interval="300ms")
def hc_mixed() -> cloaca.TriggerResult:
    if not r.exists("go"):
        return cloaca.TriggerResult.skip()
    n = int(r.incr("n:hc_mixed"))
    if n % 7 == 0:
        r.rpush("answers:hc_mixed", "error")
        raise RuntimeError(f"poll {n} fails, as every seventh does")
    if n % 3 == 0:
        r.rpush("answers:hc_mixed", "fire")
        return cloaca.TriggerResult.fire({"n": n})
    r.rpush("answers:hc_mixed", "skip")
    return cloaca.TriggerResult.skip()


@cloaca.trigger(workflow="noted", poll_interval="300ms", overlap="buffer_one", dedup_key=["key"])
def hc_held() -> cloaca.TriggerResult:
    if not r.exists("go"):
        return cloaca.TriggerResult.skip()
    n = int(r.incr("n:hc_held"))
    r.rpush("answers:hc_held", "fire")
    return cloaca.TriggerResult.fire({"key": "k", "n": n, "sleep": 1.0})
