"""The app of the overlap-policy tests: one trigger per policy, all firing the same work.

Broker and results: ``E2E_REDIS_URL``; store: ``E2E_DATABASE_URL``; ``E2E_TRIGGERS``
selects the triggers. Trigger ``ov_<policy>`` has ``overlap="<policy>"`` and
``dedup_key=["key"]``: while ``go:<trigger>`` exists, every poll fires
``{"key": "k", "n": <n>}`` with ``n`` counting its fires (``INCR n:<trigger>``), so
each fire is the same work with a newer context. Each fire reports
``fires:<trigger>`` (``n``, ``t``); each evaluation counts ``evals:<trigger>``.

The workflow ``slow`` has two steps, ``first`` (``sleep:<trigger>`` seconds, 2 by
default) and ``second`` (0.3 s); each reports its start and end to
``marks:<trigger>`` (``execution_id``, ``n``, ``step``, ``event``, ``t``), stamped
with Redis's clock (``TIME``); the first step also keeps ``alive:<execution_id>``
at the last moment it ran.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

import cloaca_celery as cloaca

REDIS_URL = os.environ["E2E_REDIS_URL"]
SELECTED = set(filter(None, os.environ.get("E2E_TRIGGERS", "").split(",")))
POLICIES = ("skip", "allow", "buffer_one", "buffer_all", "cancel_other", "terminate_other")

app = Celery("e2e_overlap", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"],
               sweep_interval=os.environ.get("E2E_SWEEP_INTERVAL", "1s"))
r = redis.Redis.from_url(REDIS_URL)


def redis_now() -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def mark(context: cloaca.Context, step: str, event: str) -> None:
    r.rpush(f"marks:{context['trigger_name']}", json.dumps({
        "execution_id": context["execution_id"], "n": context["n"], "step": step, "event": event,
        "t": redis_now(), "pid": os.getpid(),
    }))


@cloaca.task()
def first(context: cloaca.Context) -> cloaca.Context:
    """Runs ``sleep:<trigger>`` seconds, saying every 20 ms that it still runs (``alive:<execution>``):
    a step terminated from outside leaves its last sign of life there."""
    mark(context, "first", "start")
    end = time.monotonic() + float(r.get(f"sleep:{context['trigger_name']}") or 2)
    while time.monotonic() < end:
        r.set(f"alive:{context['execution_id']}", redis_now(), ex=600)
        time.sleep(0.02)
    mark(context, "first", "end")
    return context


@cloaca.task(dependencies=[first])
def second(context: cloaca.Context) -> cloaca.Context:
    mark(context, "second", "start")
    time.sleep(0.3)
    mark(context, "second", "end")
    return context


with cloaca.WorkflowBuilder("slow") as builder:
    builder.add_task(first)
    builder.add_task(second)


def _trigger(policy: str) -> None:
    name = f"ov_{policy}"
    options: dict[str, Any] = {}
    if policy == "buffer_all" and os.environ.get("E2E_MAX_PENDING"):
        options["max_pending"] = int(os.environ["E2E_MAX_PENDING"])

    @cloaca.trigger(workflow="slow", name=name, poll_interval=os.environ.get("E2E_INTERVAL", "300ms"),
                    overlap=policy, dedup_key=["key"], **options)
    def fire_same_work() -> cloaca.TriggerResult:
        r.incr(f"evals:{name}")  # before reading go: the test waits for the polls that read it
        if not r.exists(f"go:{name}"):
            return cloaca.TriggerResult.skip()
        n = int(r.incr(f"n:{name}"))
        r.rpush(f"fires:{name}", json.dumps({"n": n, "t": redis_now()}))
        return cloaca.TriggerResult.fire({"key": "k", "n": n})


for _policy in POLICIES:
    if f"ov_{_policy}" in SELECTED:
        _trigger(_policy)
