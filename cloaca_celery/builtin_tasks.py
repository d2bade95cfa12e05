"""cloaca's own Celery tasks, their names and their bodies.

``install(app)`` registers them on the app (``shared=False``: other apps do
not get them):

* ``cloaca.dispatch``, sent by beat on a short tick: publishes the due polls;
* ``cloaca.poll``, one trigger polled once: sent by the dispatcher (with its
  slot), the CLI's ``poll --fire`` and the admin's "poll now" (without);
* ``cloaca.sweep``, sent by beat: ends the executions whose end was never
  reported;
* ``cloaca.complete``, the last task of every fired canvas, and
  ``cloaca.failed``, linked as the error callback of every step: each ends
  its execution and releases its claim. Both retry through a store outage.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from celery import Celery

from .binding import Runtime
from .context import merge_contexts
from .dispatch import dispatch_due
from .firing import Firer
from .polling import Poller
from .slots import Slot
from .sweep import sweep

logger = logging.getLogger("cloaca_celery.builtin_tasks")

DISPATCH_TASK = "cloaca.dispatch"
POLL_TASK = "cloaca.poll"
SWEEP_TASK = "cloaca.sweep"
COMPLETE_TASK = "cloaca.complete"
FAILED_TASK = "cloaca.failed"
NOT_STEPS = frozenset({COMPLETE_TASK, FAILED_TASK})
"""Tasks that carry an execution in their arguments but are no step of its workflow."""

# Recording an end retries through a store outage: 1, 2, 4 ... 60 s apart, for about 15 minutes.
_RECORD_RETRIES: dict[str, Any] = {
    "autoretry_for": (Exception,), "max_retries": 20, "retry_backoff": 1, "retry_backoff_max": 60,
    "retry_jitter": False,
}


def poller(app: Celery, runtime: Runtime) -> Poller:
    """A poller of ``app`` (fresh settings and store: the store may have been replaced after a fork)."""
    firer = Firer(app, runtime.settings, runtime.store, COMPLETE_TASK, FAILED_TASK)
    return Poller(runtime.settings, runtime.store, firer)


def register(app: Celery, runtime: Runtime) -> None:
    """Register cloaca's tasks on ``app``."""

    @app.task(name=POLL_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def poll(
        trigger_name: str, slot: dict[str, Any] | None = None, **sent_by_0_1: Any
    ) -> dict[str, Any] | None:
        """Poll one trigger once.

        Scheduled polls carry their slot and return nothing (nobody reads it,
        and Celery would format it); manual polls return their report. A
        dispatcher of cloaca 0.1 sent the slot's fields as keyword arguments
        (``hold_by`` for ``lease_by``); such a poll is still understood.
        """
        if slot is None and sent_by_0_1.get("next_due") is not None:
            slot = {**sent_by_0_1, "lease_by": sent_by_0_1.get("hold_by")}
        if slot is None:
            return poller(app, runtime).poll(trigger_name).as_dict()
        poller(app, runtime).poll(trigger_name, Slot.from_message(slot))
        return None

    @app.task(name=DISPATCH_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def dispatch() -> int:
        """Publish a ``cloaca.poll`` for every due trigger."""
        return dispatch_due(app, runtime.settings, runtime.store, POLL_TASK)

    @app.task(name=SWEEP_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def sweep_task() -> int:
        """End executions whose end was never reported (see :mod:`cloaca_celery.sweep`)."""
        return sweep(app, runtime.settings, runtime.store)

    @app.task(name=COMPLETE_TASK, shared=False, ignore_result=False, serializer="json", **_RECORD_RETRIES)
    def complete(result: Any = None, *, execution: dict[str, Any]) -> Any:
        """The last step of every fired workflow: records its success and releases the claim."""
        runtime.store.finish_execution(
            execution["execution_id"], "succeeded", None, datetime.now(timezone.utc)
        )
        logger.info(
            "%s: workflow %r execution %s succeeded",
            execution.get("trigger_name"), execution.get("workflow"), execution.get("execution_id"),
        )
        if isinstance(result, list):
            return merge_contexts(result, f"workflow {execution.get('workflow')!r}")
        return result

    @app.task(name=FAILED_TASK, shared=False, ignore_result=True, serializer="json", **_RECORD_RETRIES)
    def failed(failed_task_id: str | None = None, *, execution: dict[str, Any]) -> None:
        """Linked as the error callback of every step: records the failure and releases the claim."""
        error = f"task {failed_task_id} failed"
        if failed_task_id:
            try:
                outcome = app.AsyncResult(failed_task_id).result
            except Exception:  # noqa: BLE001 - the failure is recorded even if its text is not
                outcome = None
            if outcome is not None:
                error = f"task {failed_task_id} failed: {type(outcome).__name__}: {outcome}"
        if runtime.store.finish_execution(
            execution["execution_id"], "failed", error, datetime.now(timezone.utc)
        ):
            logger.warning(
                "%s: workflow %r execution %s failed: %s",
                execution.get("trigger_name"), execution.get("workflow"),
                execution.get("execution_id"), error,
            )
