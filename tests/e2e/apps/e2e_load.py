"""The app of the load tests (tests/e2e/test_load.py): many cheap triggers, and the bare-Celery no-op.

``E2E_LOAD_TRIGGERS`` skipping triggers (``load-0000`` ...) at ``E2E_LOAD_INTERVAL``
seconds are registered; the test enables as many as the load it wants. Each
evaluation adds one to ``evals`` (a hash: evaluations per whole second of
this host's clock), and each ``load.noop`` task, the bare-Celery side, to
``noops``: both pay the same one Redis round trip.
``E2E_LOAD_FIRING`` adds a trigger at 50 ms that fires every poll.
``E2E_PREFETCH`` sets ``worker_prefetch_multiplier``, ``E2E_POLL_BATCH_SIZE`` ``cloaca_poll_batch_size``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

import cloaca_celery as cloaca

REDIS_URL = os.environ["E2E_REDIS_URL"]
TRIGGERS = int(os.environ.get("E2E_LOAD_TRIGGERS", "0"))
INTERVAL = float(os.environ.get("E2E_LOAD_INTERVAL", "1"))

app = Celery("e2e_load", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600,
                worker_prefetch_multiplier=int(os.environ.get("E2E_PREFETCH", "4")))
cloaca.install(app, database_url=os.environ["E2E_DATABASE_URL"],
               poll_batch_size=int(os.environ.get("E2E_POLL_BATCH_SIZE", "50")))
r = redis.Redis.from_url(REDIS_URL)


@cloaca.task()
def load_step(context: cloaca.Context) -> None:
    """The workflow of the 50 ms firing trigger (``E2E_LOAD_FIRING``); the load triggers only skip."""


with cloaca.WorkflowBuilder("load_flow") as builder:
    builder.add_task(load_step)


def cheap_poll() -> cloaca.TriggerResult:
    r.hincrby("evals", str(int(time.time())))
    return cloaca.TriggerResult.skip()


for i in range(TRIGGERS):
    cloaca.trigger(workflow="load_flow", name=f"load-{i:04d}", poll_interval=INTERVAL)(cheap_poll)


if os.environ.get("E2E_LOAD_FIRING"):
    @cloaca.trigger(workflow="load_flow", name="firing-50ms", poll_interval="50ms", allow_concurrent=True)
    def firing() -> cloaca.TriggerResult:
        """Issue 15's new user: a trigger at 50 ms that fires every poll, beside the cheap ones."""
        return cloaca.TriggerResult.fire()


@app.task(name="load.noop", ignore_result=True)
def noop() -> None:
    """The bare-Celery side: a task that does what a load trigger does, without cloaca."""
    r.hincrby("noops", str(int(time.time())))
