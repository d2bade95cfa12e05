"""The Celery app of the benchmark's worker and beat processes.

Configured from the environment by :mod:`benchmarks.run`:

* ``BENCH_REDIS_URL`` - broker and result backend (a private Redis database);
* ``BENCH_DATABASE_URL`` - the PostgreSQL store (a private schema via ``search_path``);
* ``BENCH_MODE`` - ``skip`` (triggers that return skip), ``scale`` (skip, and
  every evaluation and poll start is recorded), ``fire`` (triggers that fire
  every poll, the default ``allow_concurrent=False``) or ``latency`` (one trigger
  with the default overlap, firing a new context every poll, whose first step records the
  fire latency) or
  ``recovery`` (one trigger that fires the same context while ``bench:recovery:go`` is set,
  into a step that sleeps ``bench:recovery:sleep`` seconds and records its start);
* ``BENCH_EMBEDDED`` - a folder: run on the embedded default there instead (filesystem
  broker, SQLite results and store; Redis then only carries the benchmark's own counts);
* ``BENCH_DISPATCH_QUEUE`` - ``cloaca_dispatch_queue`` (the dispatcher's own queue);
* ``BENCH_TRIGGERS``, ``BENCH_INTERVAL`` - how many triggers, at which interval (seconds);
* ``BENCH_FLUSH_EVERY`` - counter batch size (see :mod:`benchmarks.counting`);
* ``BENCH_SQL_DETAIL`` - also count each statement by its first 100 characters
  (hash ``bench:sql:detail``), to see which ones a poll sends.

The bare-Celery side of every ratio runs in this same app and worker
configuration: ``bench.noop`` (throughput) and ``bench.ping`` (round trip).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, current_task, signals

import cloaca_celery as cloaca
from benchmarks.counting import Tally, count_sql, is_write
from benchmarks.measure import trigger_name
from cloaca_celery.builtin_tasks import DISPATCH_TASK, POLL_BATCH_TASK, POLL_TASK

REDIS_URL = os.environ["BENCH_REDIS_URL"]
DATABASE_URL = os.environ["BENCH_DATABASE_URL"]
MODE = os.environ.get("BENCH_MODE", "skip")
TRIGGERS = int(os.environ.get("BENCH_TRIGGERS", "0"))
INTERVAL = float(os.environ.get("BENCH_INTERVAL", "300"))  # seconds
WORKFLOW = "bench_flow"

EMBEDDED = os.environ.get("BENCH_EMBEDDED", "")

if EMBEDDED:  # the embedded default in that folder: no broker, backend or store configured
    app = Celery("bench_app")
    app.conf.update(broker_connection_retry_on_startup=True)
    cloaca.install(app, home=EMBEDDED)
else:
    app = Celery("bench_app", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
    cloaca.install(app, database_url=DATABASE_URL, dispatch_queue=os.environ.get("BENCH_DISPATCH_QUEUE"))

tally = Tally(REDIS_URL, int(os.environ.get("BENCH_FLUSH_EVERY", "50")))


# -- counting ------------------------------------------------------------------


SQL_DETAIL = bool(os.environ.get("BENCH_SQL_DETAIL"))


def _on_statement(statement: str, rowcount: int) -> None:
    tally.incr("bench:sql:all")
    if is_write(statement):
        tally.incr("bench:sql:write")
        if rowcount > 0:
            tally.incr("bench:sql:rows", rowcount)
    if SQL_DETAIL:
        tally.hincr("bench:sql:detail", " ".join(statement.split())[:100])


count_sql(_on_statement)


@signals.worker_process_init.connect(weak=False)
def _pool_process(**_: Any) -> None:
    tally.batch_here()


@signals.task_postrun.connect(weak=False)
def _count_done(task: Any = None, retval: Any = None, **_: Any) -> None:
    name = getattr(task, "name", "?")
    tally.incr(f"bench:done:{name}")
    if name == DISPATCH_TASK and isinstance(retval, int):
        tally.incr("bench:dispatched", retval)


@signals.task_revoked.connect(weak=False)
def _count_expired(request: Any = None, expired: bool = False, **_: Any) -> None:
    if expired:
        name = getattr(request, "task", None) or getattr(request, "name", "?")
        if name == POLL_BATCH_TASK:  # counted as the polls it carried
            entries = (getattr(request, "args", None) or [[]])[0]
            tally.incr(f"bench:expired:{POLL_TASK}", len(entries) if isinstance(entries, list) else 1)
        else:
            tally.incr(f"bench:expired:{name}")


_poll_started = [0.0]


@signals.task_prerun.connect(weak=False)
def _poll_start(task: Any = None, args: Any = (), kwargs: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    if name == "bench.slot":  # the bare side of the scale measurement
        now = time.time()
        tally.push("bench:late", f"{now:.6f} {now - float(args[0]):.6f} slot")
        return
    if name != POLL_TASK:
        return
    now = time.time()
    _poll_started[0] = now
    # Scale mode: each trigger records its own lateness when it runs (single or batched).


@signals.worker_ready.connect(weak=False)
def _worker_ready(**_: Any) -> None:
    import redis

    # The pool has forked: batching (and its thread) is safe in the main process from now on.
    # It counts the polls it discards as expired; a solo worker runs its tasks here.
    tally.batch_here()
    redis.Redis.from_url(REDIS_URL).incr("bench:ready:worker")


@signals.beat_init.connect(weak=False)
def _beat_ready(**_: Any) -> None:
    # Connected after install(): runs once cloaca's own beat start-up (the trigger sync) is done.
    import redis

    redis.Redis.from_url(REDIS_URL).incr("bench:ready:beat")


# -- the bare-Celery side --------------------------------------------------------


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """The no-op task of the throughput ratio."""


@app.task(name="bench.ping")
def ping() -> str:
    """The no-op task of the round-trip ratio (its result goes through the Redis backend)."""
    return "pong"


@app.task(name="bench.slot", ignore_result=True)
def slot(due: float) -> None:
    """The bare side of the scale measurement: a no-op task due at ``due``, counted like a poll."""
    tally.hincr("bench:polls", str(int(time.time())))


# -- the cloaca side ---------------------------------------------------------------


@cloaca.task(name="bench.first_step")
def first_step(context: cloaca.Context) -> None:
    """The workflow's first step: records how long after its poll started it started."""
    started = context.get("poll_started")
    if started is not None:
        import redis

        redis.Redis.from_url(REDIS_URL).rpush("bench:fire_latency", time.time() - float(started))


with cloaca.WorkflowBuilder(WORKFLOW) as builder:
    builder.add_task(first_step)


@cloaca.task(name="bench.recovery_step")
def recovery_step(context: cloaca.Context) -> None:
    """The step of the recovery measurement: records its start, then sleeps as told."""
    import json

    import redis
    from celery import current_task

    client = redis.Redis.from_url(REDIS_URL)
    seconds, now = float(client.get("bench:recovery:sleep") or 0), client.time()
    client.rpush("bench:recovery:starts", json.dumps({
        "execution_id": context["execution_id"], "hostname": current_task.request.hostname,
        "t": now[0] + now[1] / 1e6,
    }))
    time.sleep(seconds)


with cloaca.WorkflowBuilder("bench_recovery") as recovery_builder:
    recovery_builder.add_task(recovery_step)


def recovery_poll() -> cloaca.TriggerResult:
    import redis

    if redis.Redis.from_url(REDIS_URL).get("bench:recovery:go"):
        return cloaca.TriggerResult.fire({"job": "recovery"})
    return cloaca.TriggerResult.skip()


def skip_poll() -> cloaca.TriggerResult:
    return cloaca.TriggerResult.skip()


def counted_skip_poll(name: str) -> Any:
    """A skipping trigger that counts its evaluation and records its lateness: start - its slot's due.

    The slot comes with the poll message: a ``cloaca.poll``'s ``slot``, or this
    trigger's entry in a ``cloaca.poll_batch``.
    """

    def poll() -> cloaca.TriggerResult:
        now = time.time()
        tally.hincr("bench:polls", str(int(now)))
        request = current_task.request if current_task else None
        due = None
        if request is not None and request.task == POLL_BATCH_TASK:
            due = next((slot["due"] for entry, slot in request.args[0] if entry == name), None)
        elif request is not None:
            due = ((request.kwargs or {}).get("slot") or {}).get("due")
        lateness = "-" if due is None else f"{now - float(due):.6f}"
        tally.push("bench:late", f"{now:.6f} {lateness} {name}")
        return cloaca.TriggerResult.skip()

    return poll


def fire_poll() -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire({"bench": True})


def latency_poll() -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire(cloaca.Context({"poll_started": _poll_started[0] or time.time()}))


if MODE == "recovery":
    cloaca.trigger(workflow="bench_recovery", name=trigger_name(0), poll_interval=INTERVAL)(recovery_poll)
elif MODE == "latency":
    for i in range(TRIGGERS):
        cloaca.trigger(workflow=WORKFLOW, name=trigger_name(i), poll_interval=INTERVAL)(latency_poll)
else:
    for i in range(TRIGGERS):
        name = trigger_name(i)
        function = counted_skip_poll(name) if MODE == "scale" else {"skip": skip_poll,
                                                                    "fire": fire_poll}[MODE]
        cloaca.trigger(workflow=WORKFLOW, name=name, poll_interval=INTERVAL)(function)
