"""The app the Redis end-to-end tests run in real worker and beat processes.

``E2E_TRIGGERS`` (comma-separated) selects which triggers exist, so each test
polls only what it observes. Triggers and steps report to Redis lists
(``every_500ms`` also its slot, in ``slots:every_500ms``: see
``tests/e2e/poll_reports.py``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, chain

import cloaca_celery as cloaca
from tests.e2e.poll_reports import poll_fields

REDIS_URL = os.environ["E2E_REDIS_URL"]
SELECTED = set(filter(None, os.environ.get("E2E_TRIGGERS", "").split(",")))

app = Celery("e2e_app", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(
    app,
    database_url=os.environ["E2E_DATABASE_URL"],
    poll_time_limit=os.environ.get("E2E_POLL_TIME_LIMIT", "30s"),
    **({"poll_queue": os.environ["E2E_POLL_QUEUE"]} if os.environ.get("E2E_POLL_QUEUE") else {}),
)
r = redis.Redis.from_url(REDIS_URL)


def note(key: str, value: Any) -> None:
    r.rpush(key, json.dumps(value))


# -- workflows ----------------------------------------------------------------


@cloaca.task()
def first(context: cloaca.Context) -> cloaca.Context:
    note("wf:linear:first", context.to_dict())
    context["trail"] = ["first"]
    return context


@cloaca.task(dependencies=[first])
def second(context: cloaca.Context) -> dict[str, Any]:
    return {**context.to_dict(), "trail": [*context["trail"], "second"]}


@cloaca.task(dependencies=["second"])
def third(context: cloaca.Context) -> None:
    note("wf:linear:done", context.to_dict())


with cloaca.WorkflowBuilder("linear") as builder:
    builder.description("three steps in a row")
    builder.add_task(first)
    builder.add_task(second)
    builder.add_task(third)


@cloaca.task(id="split")
def split(context: cloaca.Context) -> None:
    note("wf:dag:split", context.to_dict())


BRANCH_SECONDS = 1.0  # long enough that two branches started a busy machine's moment apart overlap


@cloaca.task(id="left", dependencies=["split"])
def left(context: cloaca.Context) -> cloaca.Context:
    note("wf:dag:branch", {"branch": "left", "t": time.time()})
    time.sleep(BRANCH_SECONDS)
    context["left"] = "L"
    return context


@cloaca.task(id="right", dependencies=["split"])
def right(context: cloaca.Context) -> cloaca.Context:
    note("wf:dag:branch", {"branch": "right", "t": time.time()})
    time.sleep(BRANCH_SECONDS)
    context["right"] = "R"
    return context


@cloaca.task(id="join", dependencies=["left", "right"])
def join(context: cloaca.Context) -> None:
    note("wf:dag:join", {**context.to_dict(), "t": time.time()})


with cloaca.WorkflowBuilder("dag") as builder:
    builder.add_task("split")
    builder.add_task("left")
    builder.add_task("right")
    builder.add_task("join")


@app.task(name="e2e.plain_add")
def plain_add(context: dict[str, Any], amount: int) -> dict[str, Any]:
    return {**context, "total": context.get("total", 0) + amount}


@app.task(name="e2e.plain_record")
def plain_record(context: dict[str, Any]) -> None:
    note("wf:plain", context)


cloaca.register_workflow("plain", chain(plain_add.s(2), plain_add.s(3), plain_record.s()))
cloaca.register_workflow("factory", lambda ctx: plain_record.s({**ctx, "via": "factory"}))


# -- triggers -------------------------------------------------------------------


def selected(name: str) -> bool:
    return name in SELECTED


if selected("every_100ms"):
    @cloaca.trigger(workflow="linear", poll_interval="100ms")
    def every_100ms() -> cloaca.TriggerResult:
        r.rpush("polls:every_100ms", time.time())
        return cloaca.TriggerResult.skip()

if selected("every_500ms"):
    @cloaca.trigger(workflow="linear", poll_interval="500ms")
    def every_500ms() -> cloaca.TriggerResult:
        now = time.time()
        r.rpush("polls:every_500ms", now)
        note("slots:every_500ms", {"t": now, **poll_fields()})  # which slot it was, and how late
        return cloaca.TriggerResult.skip()

if selected("slow"):
    @cloaca.trigger(workflow="linear", poll_interval="200ms")
    def slow() -> bool:
        start = time.time()
        time.sleep(1.0)
        note("polls:slow", [start, time.time()])
        return False

if selected("raises"):
    @cloaca.trigger(workflow="linear", poll_interval="300ms")
    def raises() -> cloaca.TriggerResult:
        r.rpush("polls:raises", time.time())
        raise RuntimeError("boom from the raises trigger")

if selected("wrong_type"):
    @cloaca.trigger(workflow="linear", poll_interval="300ms")
    def wrong_type() -> Any:
        r.rpush("polls:wrong_type", time.time())
        return "yes"

if selected("hangs"):
    @cloaca.trigger(workflow="linear", poll_interval="300ms")
    def hangs() -> bool:
        r.rpush("polls:hangs", time.time())
        time.sleep(3600)
        return False

for _workflow in ("linear", "dag", "plain", "factory"):
    if selected(f"fire_{_workflow}"):
        def _make(workflow: str) -> None:
            @cloaca.trigger(workflow=workflow, name=f"fire_{workflow}", poll_interval="200ms",
                            allow_concurrent=True)
            def fire() -> cloaca.TriggerResult:
                item = r.lpop(f"inbox:{workflow}")
                if item is None:
                    return cloaca.TriggerResult.skip()
                return cloaca.TriggerResult.fire(cloaca.Context({"item": item.decode(), "total": 10}))

        _make(_workflow)
