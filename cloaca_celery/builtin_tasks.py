"""cloaca's own Celery tasks, their names and their bodies.

``install(app)`` registers them on the app (``shared=False``: other apps do
not get them):

* ``cloaca.dispatch``, sent by beat on a short tick: publishes the due polls;
* ``cloaca.poll``, one trigger polled once: sent by the dispatcher (with its
  slot), the CLI's ``poll --fire`` and the admin's "poll now" (without);
* ``cloaca.preview``, one trigger evaluated once without firing, on a
  worker: sent by the CLI's ``poll --worker`` and the admin's "Preview";
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

from celery import Celery, signals

from .binding import Runtime, runtime_of
from .context import merge_contexts
from .dispatch import EXPIRY_ALLOWANCE, dispatch_due
from .firing import Firer
from .logs import log_throttled
from .polling import Poller, dropped_late
from .preview import preview_trigger
from .settings import Settings, resolve_settings
from .slots import Slot
from .sweep import sweep

logger = logging.getLogger("cloaca_celery.builtin_tasks")

DISPATCH_TASK = "cloaca.dispatch"
POLL_TASK = "cloaca.poll"
PREVIEW_TASK = "cloaca.preview"
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


FAILURE_TEXT_TRIES = 3


def _failure_of(app: Celery, task_id: str | None) -> BaseException | None:
    """The exception a failed task stored in the result backend, if it is there (yet)."""
    if not task_id:
        return None
    try:
        outcome = app.AsyncResult(task_id).result
    except Exception:  # noqa: BLE001 - the failure is recorded even if its text is not
        return None
    return outcome if isinstance(outcome, BaseException) else None


def firer(app: Celery, runtime: Runtime) -> Firer:
    """The firer of ``app`` (fresh settings and store: the store may have been replaced after a fork)."""
    return Firer(app, runtime.settings, runtime.store, runtime.clock, COMPLETE_TASK, FAILED_TASK)


def poller(app: Celery, runtime: Runtime) -> Poller:
    """A poller of ``app``."""
    return Poller(runtime.settings, runtime.store, runtime.clock, firer(app, runtime), runtime.health)


def poll_options(settings: Settings) -> dict[str, Any]:
    """What every poll message carries, scheduled or manual: its time limits and its queue."""
    options: dict[str, Any] = {
        "soft_time_limit": settings.poll_time_limit,
        "time_limit": settings.poll_hard_time_limit,
    }
    if settings.poll_queue:
        options["queue"] = settings.poll_queue
    return options


def send_manual_poll(app: Celery, name: str, *, wait: bool) -> Any:
    """Send ``cloaca.poll`` for ``name`` as the CLI's ``poll --fire`` and the admin's "poll now" do.

    It carries the poll time limits and goes to the poll queue of the app's
    settings (defaults, if cloaca is not installed on ``app`` here).
    """
    runtime = runtime_of(app)
    settings = runtime.settings if runtime is not None else resolve_settings(app.conf, {})
    options = {"ignore_result": not wait, **poll_options(settings)}
    task = app.tasks.get(POLL_TASK)
    if task is not None:  # through the task, so that task_always_eager runs it here
        return task.apply_async(args=(name,), **options)
    return app.send_task(POLL_TASK, args=(name,), **options)


def send_preview(app: Celery, name: str) -> Any:
    """Send ``cloaca.preview`` for ``name`` (the CLI's ``poll --worker``, the admin's "Preview").

    It goes where polls go (the poll queue, the poll time limits) and keeps
    its result: the caller waits for it (``.get(timeout=...)``), so the app
    needs a result backend. The result is a :class:`~cloaca_celery.preview.Preview`'s dict.
    """
    runtime = runtime_of(app)
    settings = runtime.settings if runtime is not None else resolve_settings(app.conf, {})
    options = {"ignore_result": False, **poll_options(settings)}
    task = app.tasks.get(PREVIEW_TASK)
    if task is not None:  # through the task, so that task_always_eager runs it here
        return task.apply_async(args=(name,), **options)
    return app.send_task(PREVIEW_TASK, args=(name,), **options)


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

    @app.task(name=PREVIEW_TASK, shared=False, bind=True, ignore_result=False, acks_late=False,
              serializer="json")
    def preview(self: Any, trigger_name: str) -> dict[str, Any]:
        """Evaluate one trigger once and fire nothing; return what it said (writes nothing)."""
        return preview_trigger(trigger_name, runtime.store, worker=self.request.hostname).as_dict()

    @app.task(name=DISPATCH_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def dispatch() -> int:
        """Publish a ``cloaca.poll`` for every due trigger."""
        return dispatch_due(app, runtime.settings, runtime.store, runtime.clock, POLL_TASK,
                            poll_options(runtime.settings))

    @app.task(name=SWEEP_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def sweep_task() -> int:
        """End executions whose end was never reported (see :mod:`cloaca_celery.sweep`)."""
        return sweep(app, runtime.settings, runtime.store, runtime.clock, firer(app, runtime))

    @app.task(name=COMPLETE_TASK, shared=False, ignore_result=False, serializer="json", **_RECORD_RETRIES)
    def complete(result: Any = None, *, execution: dict[str, Any]) -> Any:
        """The last step of every fired workflow: records its success and releases the claim."""
        ended = runtime.store.finish_execution(
            execution["execution_id"], "succeeded", None,
            datetime.fromtimestamp(runtime.clock.now(), tz=timezone.utc),
        )
        if ended:
            runtime.after_end(execution["execution_id"], execution["trigger_name"],
                              execution.get("dedup_hash"))
        logger.info(
            "%s: workflow %r execution %s succeeded",
            execution.get("trigger_name"), execution.get("workflow"), execution.get("execution_id"),
        )
        if isinstance(result, list):
            return merge_contexts(result, f"workflow {execution.get('workflow')!r}")
        return result

    @app.task(name=FAILED_TASK, shared=False, ignore_result=True, serializer="json", bind=True,
              **_RECORD_RETRIES)
    def failed(self: Any, failed_task_id: str | None = None, *, execution: dict[str, Any]) -> None:
        """Linked as the error callback of every step: records the failure.

        The execution ends ``failed``, and frees its claim, once no other step
        of it runs: a parallel branch still running keeps it (and no new step
        of it starts). The failed task's error may reach the result backend
        a moment after this runs (a chord's): it is asked again, a few times,
        for the text.
        """
        outcome = _failure_of(app, failed_task_id)
        if outcome is None and failed_task_id and self.request.retries < FAILURE_TEXT_TRIES:
            raise self.retry(countdown=0.3)
        error = f"task {failed_task_id} failed"
        if outcome is not None:
            error = f"task {failed_task_id} failed: {type(outcome).__name__}: {outcome}"
        ended = runtime.store.request_end(
            execution["execution_id"], "failed", error, runtime.clock.now(), failed_task_id
        )
        if ended:
            runtime.after_end(execution["execution_id"], execution["trigger_name"],
                              execution.get("dedup_hash"))
        logger.warning(
            "%s: workflow %r execution %s failed: %s%s",
            execution.get("trigger_name"), execution.get("workflow"), execution.get("execution_id"),
            error, "" if ended else " (it ends when its other running steps do)",
        )

    def on_expired(request: Any = None, sender: Any = None, expired: bool = False, **_: Any) -> None:
        """Celery discarded an expired message of ours: a poll late by far more than its slot allows."""
        name = getattr(request, "task", None) or getattr(request, "name", None)
        if not expired or name not in (POLL_TASK, DISPATCH_TASK) or getattr(sender, "app", app) is not app:
            return
        if name == POLL_TASK:
            args = getattr(request, "args", None) or ("?",)
            # Celery discards expired messages in the worker's main process, which must not start
            # a thread (it may fork a new pool process): the count waits for one (see counters).
            dropped_late(str(args[0]), EXPIRY_ALLOWANCE, runtime.health, in_pool=False)
        else:
            log_throttled(
                logger, "dispatch-expired", logging.WARNING,
                "dispatch: a tick from beat arrived expired: the workers are far behind, or beat's "
                "clock is far from this worker's (see the clock warnings at start-up)", every=60.0,
            )

    signals.task_revoked.connect(on_expired, weak=False)
