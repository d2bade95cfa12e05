"""The app of the batched-poll tests (tests/e2e/test_batches.py).

``E2E_BATCH_CHEAP`` cheap triggers ``cheap-00`` ... at 1 s, and the triggers
named in ``E2E_BATCH_ODD`` (``hang``: sleeps 30 s; ``failing``: raises), all
``batch=True`` so that they share messages whatever is measured. Each
evaluation pushes ``"<time> <task>"`` to ``evals:<trigger>``, the task being
``cloaca.poll_batch`` or ``cloaca.poll``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, current_task

import cloaca_celery as cloaca

REDIS_URL = os.environ["E2E_REDIS_URL"]
CHEAP = int(os.environ.get("E2E_BATCH_CHEAP", "0"))
ODD = set(filter(None, os.environ.get("E2E_BATCH_ODD", "").split(",")))

app = Celery("e2e_batch", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"], poll_time_limit="2s",
               dispatch_interval="500ms")
r = redis.Redis.from_url(REDIS_URL)


def record(name: str) -> None:
    task = current_task.name if current_task else "?"
    r.rpush(f"evals:{name}", f"{time.time():.6f} {task}")


@cloaca.task()
def batch_step(context: cloaca.Context) -> None:
    """Never run: these triggers do not fire."""


with cloaca.WorkflowBuilder("batch_flow") as builder:
    builder.add_task(batch_step)


def cheap(name: str) -> None:
    @cloaca.trigger(workflow="batch_flow", name=name, poll_interval="1s", batch=True)
    def poll() -> cloaca.TriggerResult:
        record(name)
        return cloaca.TriggerResult.skip()


for i in range(CHEAP):
    cheap(f"cheap-{i:02d}")

if "hang" in ODD:
    @cloaca.trigger(workflow="batch_flow", name="hang", poll_interval="1s", batch=True)
    def hang() -> cloaca.TriggerResult:
        record("hang")
        time.sleep(30)
        return cloaca.TriggerResult.skip()

if "failing" in ODD:
    @cloaca.trigger(workflow="batch_flow", name="failing", poll_interval="1s", batch=True)
    def failing() -> cloaca.TriggerResult:
        record("failing")
        raise RuntimeError("failing on purpose")
