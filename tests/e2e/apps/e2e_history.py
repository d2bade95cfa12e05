"""The app of the history, deduplication and recovery end-to-end tests.

Broker and result backend are the Redis database in ``E2E_REDIS_URL``, the
store is ``E2E_DATABASE_URL``. ``install()`` options come from ``E2E_*``
variables (see ``OPTIONS``). ``E2E_TRIGGERS`` (comma-separated) selects which
triggers exist, so each test polls only what it observes.

Everything the triggers and the workflow step do is driven by Redis keys the
test sets, and everything they do is reported to Redis lists:

* ``polls:<trigger>``: one JSON record per poll (``t``, ``pid``, ``ppid``;
  ``task``: the id of the ``cloaca.poll`` task it runs in; ``due``: the slot the
  dispatcher claimed for it), written before the trigger reads its keys.
* ``poll_ended:<trigger>``: the ids of the poll tasks that have ended (a set;
  see ``tests/e2e/poll_reports.py``).
* ``go:<trigger>``: while it exists, a *repeat* trigger fires the same context
  (``{"key": "same"}``) on every poll; otherwise it skips.
* ``inbox:<trigger>``: an *inbox* trigger fires ``{"item": <item>}`` for each
  item it pops, one per poll.
* the ``health`` trigger pops ``health:script`` (``ok``/``fail``) once per poll
  and keeps its failure count in the trigger ``state``.

The one workflow, ``job``, has one step routed to the ``e2e.steps`` queue. For
the trigger that fired it, it reports ``started:<trigger>`` (with the worker's
main pid as ``ppid``) and ``steps:<trigger>`` (start and end), and obeys:
``fail:<trigger>`` (a list: each item makes one run raise), ``sleep:<trigger>``
(seconds), ``sleep_once:<trigger>`` (seconds, first run only) and
``hold:<trigger>`` (waits while the key exists, at most 60 s).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, current_task

import cloaca_celery as cloaca
from tests.e2e.poll_reports import poll_fields, report_poll_ends

REDIS_URL = os.environ["E2E_REDIS_URL"]
SELECTED = set(filter(None, os.environ.get("E2E_TRIGGERS", "").split(",")))
STEPS_QUEUE = "e2e.steps"

OPTIONS = {
    "E2E_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "E2E_HEARTBEAT_MISSES": "heartbeat_misses",
    "E2E_QUEUED_TIMEOUT": "queued_timeout",
    "E2E_SWEEP_INTERVAL": "sweep_interval",
    "E2E_POLL_TIME_LIMIT": "poll_time_limit",
    "E2E_DISPATCH_INTERVAL": "dispatch_interval",
}

app = Celery("e2e_history", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=600,
    task_routes={"e2e_history.*": {"queue": STEPS_QUEUE}},
)
if os.environ.get("E2E_VISIBILITY_TIMEOUT"):
    # How long Redis keeps a delivered, unacknowledged message before it gives it to
    # another worker; checked every second instead of every 100 s.
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["E2E_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
cloaca.install(
    app,
    database_url=os.environ["E2E_DATABASE_URL"],
    **{option: os.environ[var] for var, option in OPTIONS.items() if os.environ.get(var)},
)
r = redis.Redis.from_url(REDIS_URL)
report_poll_ends(r)


def note(key: str, value: Any) -> None:
    r.rpush(key, json.dumps(value))


def _hold(key: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)


# -- the workflow -----------------------------------------------------------------


@cloaca.task(id="job_step")
def job_step(context: cloaca.Context) -> cloaca.Context:
    trigger = context["trigger_name"]
    execution_id = context["execution_id"]
    start = time.time()
    note(f"started:{trigger}", {
        "execution_id": execution_id, "t": start, "pid": os.getpid(), "ppid": os.getppid(),
        "hostname": current_task.request.hostname,
    })
    failure = r.lpop(f"fail:{trigger}")
    if failure is not None:
        raise RuntimeError(f"step exploded: {failure.decode()}")
    _hold(f"hold:{trigger}")
    seconds = float(r.get(f"sleep:{trigger}") or 0)
    once = r.get(f"sleep_once:{trigger}")
    if once is not None and r.set(f"slept:{trigger}", execution_id, nx=True):
        seconds = float(once)
    time.sleep(seconds)
    note(f"steps:{trigger}", {"execution_id": execution_id, "start": start, "end": time.time()})
    context["done"] = True
    return context


with cloaca.WorkflowBuilder("job") as builder:
    builder.description("one step that does what the test's Redis keys say")
    builder.add_task(job_step)


@app.task(name="e2e_history.block")
def block() -> None:
    """Occupies a ``e2e.steps`` worker process while ``hold:block`` exists."""
    r.rpush("block:started", time.time())
    _hold("hold:block")


# -- triggers -----------------------------------------------------------------------


def _record_poll(name: str) -> None:
    note(f"polls:{name}", {"t": time.time(), "pid": os.getpid(), "ppid": os.getppid(), **poll_fields()})


REPEAT = {
    # name: (poll_interval, allow_concurrent)
    "hist_fail": ("200ms", False),
    "hist_revoke": ("200ms", False),
    "hist_toggle": ("200ms", False),
    "dedup_serial": ("200ms", False),
    "dedup_parallel": ("200ms", True),
    "dedup_multi": ("500ms", False),
    "recover": ("200ms", False),
}

INBOX = {
    "hist_inbox": ("100ms", False),
}


def _repeat(name: str, interval: str, allow_concurrent: bool) -> None:
    @cloaca.trigger(workflow="job", name=name, poll_interval=interval, allow_concurrent=allow_concurrent)
    def repeat() -> cloaca.TriggerResult:
        _record_poll(name)
        if r.exists(f"go:{name}"):
            return cloaca.TriggerResult.fire(cloaca.Context({"key": "same"}))
        return cloaca.TriggerResult.skip()


def _inbox(name: str, interval: str, allow_concurrent: bool) -> None:
    @cloaca.trigger(workflow="job", name=name, poll_interval=interval, allow_concurrent=allow_concurrent)
    def inbox() -> cloaca.TriggerResult:
        _record_poll(name)
        item = r.lpop(f"inbox:{name}")
        if item is None:
            return cloaca.TriggerResult.skip()
        return cloaca.TriggerResult.fire({"item": item.decode()})


for _name, (_interval, _concurrent) in REPEAT.items():
    if _name in SELECTED:
        _repeat(_name, _interval, _concurrent)

for _name, (_interval, _concurrent) in INBOX.items():
    if _name in SELECTED:
        _inbox(_name, _interval, _concurrent)


if "health" in SELECTED:
    @cloaca.trigger(workflow="job", poll_interval="200ms")
    def health(state: dict[str, Any]) -> cloaca.TriggerResult:
        """The seed's health-check pattern, with the failure count in ``state``
        instead of a module global (each poll may run in another process)."""
        item = r.lpop("health:script")
        if item is None:
            return cloaca.TriggerResult.skip()
        index = r.incr("health:seq")
        healthy = item.decode() == "ok"
        note("polls:health", {
            "index": index, "healthy": healthy, "before": state.get("failures", 0),
            "pid": os.getpid(), "ppid": os.getppid(),
        })
        if healthy:
            state["failures"] = 0
            return cloaca.TriggerResult.skip()
        state["failures"] = state.get("failures", 0) + 1
        if state["failures"] >= 3:
            state["failures"] = 0
            return cloaca.TriggerResult.fire(
                cloaca.Context({"service": "api", "consecutive_failures": 3, "poll": index})
            )
        return cloaca.TriggerResult.skip()
