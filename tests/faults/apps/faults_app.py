"""The app the fault-injection tests run in real worker and beat processes.

Environment:

* ``FAULTS_BROKER_URL``: broker and result backend (a Redis URL).
* ``FAULTS_NOTE_URL``: the Redis database the triggers and the step report to
  and read their controls from (default: the broker). The broker test points
  it at another server, so the reports survive the broker's outage.
* ``FAULTS_DATABASE_URL``: the store.
* ``FAULTS_TRIGGERS``: comma-separated ``name:kind:interval`` (see ``KINDS``).
* ``FAULTS_<OPTION>``: ``install()`` options (see ``OPTIONS``).
* ``FAULTS_RECORD_TASKS=1``: every ``cloaca.poll`` / ``cloaca.dispatch`` /
  ``cloaca.sweep`` a worker starts is reported to ``attempts:<task>``.

Reports (JSON records in Redis lists): ``polls:<trigger>`` (each time the
trigger function is entered: ``t``, ``pid``, ``ppid``, ``task``: the id of the
``cloaca.poll`` task, ``due``: its slot), ``polled:<trigger>`` (each time it
returns or raises: ``start``, ``end``), ``started:<trigger>`` and
``steps:<trigger>`` from the one workflow step; the set ``poll_ended:<trigger>``
holds the ids of the poll tasks that have ended (see ``tests/e2e/poll_reports.py``).

Controls: ``go:<trigger>`` (while it exists, *repeat* triggers fire
``{"key": "same"}`` and *counter* triggers fire ``{"n": <next>}``),
``good:<trigger>`` (while it exists a faulty trigger behaves: it fires
``{"recovered": <trigger>}`` once, then skips), ``sleep:<trigger>`` and
``sleep_once:<trigger>`` (seconds the step sleeps; the latter for one run).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery, current_task, signals

import cloaca_celery as cloaca
from tests.e2e.poll_reports import poll_fields, report_poll_ends

BROKER_URL = os.environ["FAULTS_BROKER_URL"]
NOTE_URL = os.environ.get("FAULTS_NOTE_URL") or BROKER_URL
STEPS_QUEUE = "faults.steps"

OPTIONS = {
    "FAULTS_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "FAULTS_HEARTBEAT_MISSES": "heartbeat_misses",
    "FAULTS_QUEUED_TIMEOUT": "queued_timeout",
    "FAULTS_SWEEP_INTERVAL": "sweep_interval",
    "FAULTS_POLL_TIME_LIMIT": "poll_time_limit",
    "FAULTS_DISPATCH_INTERVAL": "dispatch_interval",
}

app = Celery("faults_app", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=600,
    task_routes={"faults_app.*": {"queue": STEPS_QUEUE}},
)
options: dict[str, Any] = {option: os.environ[var] for var, option in OPTIONS.items() if os.environ.get(var)}
if os.environ.get("FAULTS_MAX_CONTEXT_BYTES"):
    options["max_context_bytes"] = int(os.environ["FAULTS_MAX_CONTEXT_BYTES"])
cloaca.install(app, database_url=os.environ["FAULTS_DATABASE_URL"], **options)
r = redis.Redis.from_url(NOTE_URL, socket_timeout=5, socket_connect_timeout=5)
report_poll_ends(r)


def note(key: str, value: Any) -> None:
    r.rpush(key, json.dumps(value))


if os.environ.get("FAULTS_RECORD_TASKS") == "1":
    @signals.task_prerun.connect(weak=False)
    def _record_attempt(task: Any = None, **_: Any) -> None:
        name = getattr(task, "name", "")
        if name in ("cloaca.poll", "cloaca.dispatch", "cloaca.sweep"):
            note(f"attempts:{name}", {"t": time.time(), "pid": os.getpid()})


# -- the workflow -----------------------------------------------------------------


@cloaca.task(id="fault_step")
def fault_step(context: cloaca.Context) -> cloaca.Context:
    trigger = context["trigger_name"]
    execution_id = context["execution_id"]
    start = time.time()
    note(f"started:{trigger}", {
        "execution_id": execution_id, "t": start, "pid": os.getpid(), "ppid": os.getppid(),
        "hostname": current_task.request.hostname,
    })
    seconds = float(r.get(f"sleep:{trigger}") or 0)
    once = r.get(f"sleep_once:{trigger}")
    if once is not None and r.set(f"slept:{trigger}", execution_id, nx=True):
        seconds = float(once)
    time.sleep(seconds)
    note(f"steps:{trigger}", {"execution_id": execution_id, "start": start, "end": time.time()})
    context["done"] = True
    return context


with cloaca.WorkflowBuilder("fault_job") as builder:
    builder.description("one step that does what the test's Redis keys say")
    builder.add_task(fault_step)


# -- triggers -----------------------------------------------------------------------


def _recovered(name: str) -> cloaca.TriggerResult | None:
    """While ``good:<name>`` exists the faulty trigger behaves: it fires once, then skips."""
    if not r.exists(f"good:{name}"):
        return None
    if r.set(f"fired:{name}", 1, nx=True):
        return cloaca.TriggerResult.fire({"recovered": name})
    return cloaca.TriggerResult.skip()


def _repeat(name: str) -> cloaca.TriggerResult:
    if r.exists(f"go:{name}"):
        return cloaca.TriggerResult.fire({"key": "same"})
    return cloaca.TriggerResult.skip()


def _counter(name: str) -> cloaca.TriggerResult:
    if r.exists(f"go:{name}"):
        return cloaca.TriggerResult.fire({"n": r.incr(f"counter:{name}")})
    return cloaca.TriggerResult.skip()


def _tick(name: str) -> cloaca.TriggerResult:
    return cloaca.TriggerResult.skip()


def _raises(name: str) -> cloaca.TriggerResult:
    raise RuntimeError(f"boom from the {name} trigger")


def _wrong_type(name: str) -> Any:
    return {"fire": True}  # a dict, not a TriggerResult or a bool


def _unserializable(name: str) -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire({"when": datetime.now(timezone.utc)})


def _oversized(name: str) -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire({"blob": "x" * 4096})  # over FAULTS_MAX_CONTEXT_BYTES


def _hangs(name: str) -> cloaca.TriggerResult:
    time.sleep(3600)
    return cloaca.TriggerResult.skip()


def _slow(name: str) -> cloaca.TriggerResult:
    time.sleep(float(r.get(f"slow:{name}") or 1.0))
    return cloaca.TriggerResult.skip()


KINDS: dict[str, tuple[Callable[[str], Any], bool, bool]] = {
    # kind: (behaviour, allow_concurrent, may recover through good:<name>)
    "repeat": (_repeat, False, False),
    "repeat_concurrent": (_repeat, True, False),
    "counter": (_counter, True, False),
    "tick": (_tick, False, False),
    "raises": (_raises, False, True),
    "wrong_type": (_wrong_type, False, True),
    "unserializable": (_unserializable, False, True),
    "oversized": (_oversized, False, True),
    "hangs": (_hangs, False, True),
    "slow": (_slow, False, True),
}


def _define(name: str, kind: str, interval: str) -> None:
    behaviour, allow_concurrent, recovers = KINDS[kind]

    @cloaca.trigger(workflow="fault_job", name=name, poll_interval=interval,
                    allow_concurrent=allow_concurrent)
    def poll() -> Any:
        start = time.time()
        note(f"polls:{name}", {"t": start, "pid": os.getpid(), "ppid": os.getppid(), **poll_fields()})
        try:
            if recovers and (result := _recovered(name)) is not None:
                return result
            return behaviour(name)
        finally:
            note(f"polled:{name}", {"start": start, "end": time.time()})


for _spec in filter(None, os.environ.get("FAULTS_TRIGGERS", "").split(",")):
    _name, _kind, _interval = _spec.split(":")
    _define(_name, _kind, _interval)
