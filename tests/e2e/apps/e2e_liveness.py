"""The app of the liveness tests: leases, heartbeats, retries, failed branches, fencing, clocks.

Broker and results: ``E2E_REDIS_URL`` (or ``E2E_BROKER_URL`` for RabbitMQ);
store: ``E2E_DATABASE_URL`` (a PostgreSQL schema of the test's own through
``?options=-csearch_path%3D<schema>``).
``install()`` options come from ``E2E_*`` variables (see ``OPTIONS``);
``E2E_TRIGGERS`` selects the triggers. Every trigger fires the same context
on every poll while ``go:<trigger>`` exists, so a second copy would start the
moment the first one's claim were freed.

Every step reports its start and end to ``marks:<trigger>`` stamped with
Redis's clock (``TIME``), the one clock every process (and every faked
clock) shares: ``{"execution_id", "step", "event": "start"|"end"|"retry",
"t", "pid", "hostname"}``. Each poll reports to ``polls:<trigger>``
(``t`` on Redis's clock, ``due`` of its slot on the store's).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, current_task
from celery.signals import task_prerun

import cloaca_celery as cloaca

REDIS_URL = os.environ["E2E_REDIS_URL"]
BROKER_URL = os.environ.get("E2E_BROKER_URL", REDIS_URL)
SELECTED = set(filter(None, os.environ.get("E2E_TRIGGERS", "").split(",")))
INTERVAL = os.environ.get("E2E_INTERVAL", "300ms")

OPTIONS = {
    "E2E_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "E2E_HEARTBEAT_MISSES": "heartbeat_misses",
    "E2E_QUEUED_TIMEOUT": "queued_timeout",
    "E2E_SWEEP_INTERVAL": "sweep_interval",
    "E2E_DISPATCH_INTERVAL": "dispatch_interval",
}

app = Celery("e2e_liveness", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(
    app, database_url=os.environ["E2E_DATABASE_URL"],
    **{option: os.environ[var] for var, option in OPTIONS.items() if os.environ.get(var)},
)
r = redis.Redis.from_url(REDIS_URL)


def redis_now() -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def mark(trigger: str, **fields: Any) -> None:
    r.rpush(f"marks:{trigger}", json.dumps({
        "t": redis_now(), "pid": os.getpid(), "hostname": current_task.request.hostname, **fields,
    }))


def _context(context: cloaca.Context) -> tuple[str, str]:
    return context["trigger_name"], context["execution_id"]


# -- steps ---------------------------------------------------------------------------------


@cloaca.task(id="long_step")
def long_step(context: cloaca.Context) -> cloaca.Context:
    """Runs ``sleep:<trigger>`` seconds (10 by default), in small sleeps a solo worker cannot answer in."""
    trigger, execution_id = _context(context)
    mark(trigger, execution_id=execution_id, step="long_step", event="start")
    end = time.monotonic() + float(r.get(f"sleep:{trigger}") or 10)
    while time.monotonic() < end:
        time.sleep(0.05)
    mark(trigger, execution_id=execution_id, step="long_step", event="end")
    return context


with cloaca.WorkflowBuilder("long") as builder:
    builder.add_task(long_step)


@cloaca.task(id="retrying_step", autoretry_for=(RuntimeError,),
             retry_kwargs={"countdown": float(os.environ.get("E2E_RETRY_COUNTDOWN", "6")), "max_retries": 3})
def retrying_step(context: cloaca.Context) -> cloaca.Context:
    """Fails its first attempt; the retry comes after a countdown longer than the lease."""
    trigger, execution_id = _context(context)
    attempt = current_task.request.retries
    mark(trigger, execution_id=execution_id, step="retrying_step", event="start", attempt=attempt)
    if attempt == 0:
        mark(trigger, execution_id=execution_id, step="retrying_step", event="retry", attempt=attempt)
        raise RuntimeError("first attempt fails")
    time.sleep(float(r.get(f"sleep:{trigger}") or 1))
    mark(trigger, execution_id=execution_id, step="retrying_step", event="end", attempt=attempt)
    return context


with cloaca.WorkflowBuilder("retrying") as builder:
    builder.add_task(retrying_step)


@cloaca.task(id="first_leg")
def first_leg(context: cloaca.Context) -> cloaca.Context:
    trigger, execution_id = _context(context)
    mark(trigger, execution_id=execution_id, step="first_leg", event="start")
    time.sleep(float(r.get(f"sleep:{trigger}") or 3))
    mark(trigger, execution_id=execution_id, step="first_leg", event="end")
    return context


@cloaca.task(id="second_leg", dependencies=["first_leg"])
def second_leg(context: cloaca.Context) -> cloaca.Context:
    trigger, execution_id = _context(context)
    mark(trigger, execution_id=execution_id, step="second_leg", event="start")
    time.sleep(float(r.get(f"sleep:{trigger}") or 3))
    mark(trigger, execution_id=execution_id, step="second_leg", event="end")
    return context


with cloaca.WorkflowBuilder("two_legs") as builder:
    builder.description("two long steps in a row: longer than the queued timeout and the lease")
    builder.add_task(first_leg)
    builder.add_task(second_leg)


@cloaca.task(id="fails_fast")
def fails_fast(context: cloaca.Context) -> cloaca.Context:
    trigger, execution_id = _context(context)
    mark(trigger, execution_id=execution_id, step="fails_fast", event="start")
    time.sleep(0.2)
    mark(trigger, execution_id=execution_id, step="fails_fast", event="end")
    raise RuntimeError("this branch fails")


@cloaca.task(id="slow_sibling")
def slow_sibling(context: cloaca.Context) -> cloaca.Context:
    trigger, execution_id = _context(context)
    mark(trigger, execution_id=execution_id, step="slow_sibling", event="start")
    time.sleep(float(r.get(f"sleep:{trigger}") or 4))
    mark(trigger, execution_id=execution_id, step="slow_sibling", event="end")
    return context


with cloaca.WorkflowBuilder("branches") as builder:
    builder.description("two parallel branches: one fails at once, the other runs on")
    builder.add_task(fails_fast)
    builder.add_task(slow_sibling)


# -- triggers ------------------------------------------------------------------------------

WORKFLOW_OF = {
    "solo_long": "long",
    "killed": "long",
    "retry_wait": "retrying",
    "marathon": "two_legs",
    "branch_fail": "branches",
    "skewed": "long",
}


def _trigger(name: str, workflow: str) -> None:
    @cloaca.trigger(workflow=workflow, name=name, poll_interval=INTERVAL)
    def repeat() -> cloaca.TriggerResult:
        r.rpush(f"polls:{name}", json.dumps({"t": redis_now(), "pid": os.getpid()}))
        if r.exists(f"go:{name}"):
            return cloaca.TriggerResult.fire({"key": "same"})
        return cloaca.TriggerResult.skip()


for _name, _workflow in WORKFLOW_OF.items():
    if _name in SELECTED:
        _trigger(_name, _workflow)


@task_prerun.connect(weak=False)
def _due(task: Any = None, kwargs: Any = None, args: Any = (), **_: Any) -> None:
    """Each scheduled poll's slot, as the dispatcher computed it on the store's clock."""
    slot = (kwargs or {}).get("slot")
    if getattr(task, "name", None) == "cloaca.poll" and slot and args:
        r.rpush(f"slots:{args[0]}", json.dumps({"due": slot["due"], "t": redis_now()}))
    elif getattr(task, "name", None) == "cloaca.poll_batch" and args:
        now = redis_now()
        for name, entry_slot in args[0]:  # each entry starts a little after the batch
            r.rpush(f"slots:{name}", json.dumps({"due": entry_slot["due"], "t": now}))
