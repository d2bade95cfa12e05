"""Which polls of a trigger are still under way: the test apps report them, the tests wait.

A poll that read a control key (``go:<trigger>``) just before the test
changed it may still fire a moment later, after the test saw no execution
active. The e2e and faults apps run in the worker: each trigger records its
``cloaca.poll`` task (``poll_fields``) in ``polls:<trigger>`` before it reads
its keys, and the worker adds every poll task that ends, its fire written and
sent, to the set ``poll_ended:<trigger>`` (``report_poll_ends``; a ``cloaca.poll_batch`` adds
its id for each of its entries). The test
waits for the polls begun so far to end (``wait_for_polls_to_end``).

The slot a poll ran for (its ``due``) also says, whatever the load, whether
a slot was polled twice (``assert_one_poll_per_slot``) and whether a poll ran
after its slot had passed.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from celery import current_task, signals

from cloaca_celery.batches import current_entry
from cloaca_celery.builtin_tasks import POLL_BATCH_TASK
from tests.e2e.harness import CeleryProject, wait_until


def poll_fields() -> dict[str, Any]:
    """The poll task's id and its slot's ``due``; ``None`` outside a worker or for a manual poll.

    In a ``cloaca.poll_batch`` the task is the batch and the slot is this poll's entry.
    """
    request = current_task.request if current_task else None
    if request is not None and request.task == POLL_BATCH_TASK:
        entry = current_entry()
        return {"task": request.id, "due": entry[1].due if entry else None}
    slot = ((request.kwargs or {}).get("slot") if request else None) or {}
    return {"task": request and request.id, "due": slot.get("due")}


def report_poll_ends(client: Any) -> None:
    """From now on, each ``cloaca.poll`` task that ends is added to ``poll_ended:<trigger>``."""

    @signals.task_postrun.connect(weak=False)
    def poll_ended(task: Any = None, task_id: str | None = None, args: Any = None, **_: Any) -> None:
        name = getattr(task, "name", "")
        if name == "cloaca.poll" and args:
            client.sadd(f"poll_ended:{args[0]}", task_id or "")
        elif name == POLL_BATCH_TASK and args:
            for trigger, _slot in args[0]:
                client.sadd(f"poll_ended:{trigger}", task_id or "")


def wait_for_polls_to_end(client: Any, trigger: str, project: CeleryProject, timeout: float = 30.0) -> None:
    """Wait until every poll of ``trigger`` begun so far has ended, its fire written and sent."""
    begun = {json.loads(x)["task"] for x in client.lrange(f"polls:{trigger}", 0, -1)} - {None}
    assert begun, f"no poll of {trigger!r} reported its task: does the app call poll_fields()?"

    def ended() -> bool:
        return begun <= {x.decode() for x in client.smembers(f"poll_ended:{trigger}")}

    wait_until(ended, timeout, f"the polls of {trigger!r} under way to end", project)


def assert_one_poll_per_slot(polls: list[dict[str, Any]], interval: float) -> None:
    """No slot was polled twice: the polls' slots are at least one interval apart.

    The dispatcher claims a slot by moving the row's ``next_poll_at`` at least
    one interval on, so one trigger's slots are an interval apart however late
    anything runs; two beats claiming one slot, or one poll run twice, show as
    the same ``due`` twice. (The times the polls started say less: a poll may
    start up to ``start_by``, so two polls of a busy machine may start closer
    than the slots are.)
    """
    dues = sorted(p["due"] for p in polls)
    assert dues and None not in dues, f"polls without their slot: {polls[:5]}"
    close = [(a, b) for a, b in itertools.pairwise(dues) if b - a < interval - 1e-6]
    assert close == [], f"slots polled less than {interval:g}s apart (twice?): {close[:5]}"
