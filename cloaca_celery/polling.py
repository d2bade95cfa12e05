"""``poll_trigger``: poll one trigger once, and fire its workflow when it says so.

This is the body of the ``cloaca.poll`` task. Beat (through the dispatcher),
the CLI's ``poll --fire`` and the admin's "poll now" all come here, so the
lease that stops overlapping polls, the error accounting and (later) the
deduplication claim apply to every path alike.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chain, chord, group
from celery.exceptions import SoftTimeLimitExceeded

from .context import canonical_json, check_json_value, context_hash
from .errors import ContextError, UnknownTriggerError
from .logs import one_line
from .results import TriggerResult
from .settings import Settings
from .store import NewExecution, PollLease, PollOutcome, PollRefusal, Store, TriggerSpec
from .triggers import TriggerDefinition, triggers
from .watchdog import LeaseWatch, watchdog
from .workflows import workflows

logger = logging.getLogger("cloaca_celery.polling")

COMPLETE_TASK = "cloaca.complete"
FAILED_TASK = "cloaca.failed"
RESERVED_KEYS = ("trigger_name", "triggered_at", "execution_id")


@dataclass(frozen=True)
class PollReport:
    """What one poll did: ``skipped``, ``fired``, ``error`` or ``not_polled``."""

    trigger_name: str
    status: str
    detail: str = ""
    execution_id: str | None = None
    context_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger_name": self.trigger_name, "status": self.status, "detail": self.detail,
            "execution_id": self.execution_id, "context_hash": self.context_hash,
        }


def interpret_result(raw: object, trigger_name: str) -> TriggerResult:
    """Accept a ``TriggerResult`` or a bool; anything else is the trigger's error."""
    if isinstance(raw, TriggerResult):
        return raw
    if raw is True:
        return TriggerResult.fire()
    if raw is False:
        return TriggerResult.skip()
    raise TypeError(
        f"trigger {trigger_name!r} returned {type(raw).__name__}; it must return "
        "TriggerResult.fire(...), TriggerResult.skip(), True or False"
    )


def evaluate(definition: TriggerDefinition, state: dict[str, Any] | None = None) -> TriggerResult:
    """Call the trigger function once (with ``state`` if it takes it) and check its result."""
    if definition.takes_state:
        raw = definition.function(state if state is not None else {})
    else:
        raw = definition.function()
    return interpret_result(raw, definition.name)


def fire_context(
    definition: TriggerDefinition, result: TriggerResult, execution_id: str,
    triggered_at: datetime, max_bytes: int,
) -> tuple[dict[str, Any], str]:
    """The context the workflow receives, and the hash of the user's part of it."""
    user = result.context.to_dict() if result.context is not None else {}
    size = len(canonical_json(user).encode("utf-8"))
    if size > max_bytes:
        raise ContextError(
            f"trigger {definition.name!r}: fired a context of {size} bytes, over the "
            f"limit of {max_bytes} (setting cloaca_max_context_bytes); pass a reference "
            "(a path, an id) instead of the data"
        )
    clashes = [k for k in RESERVED_KEYS if k in user]
    if clashes:
        logger.warning(
            "%s: context keys %s are reserved and replaced by cloaca",
            definition.name, ", ".join(clashes),
        )
    workflow_context = dict(user)
    workflow_context.update(
        trigger_name=definition.name,
        triggered_at=triggered_at.isoformat(),
        execution_id=execution_id,
    )
    return workflow_context, context_hash(user)


def assign_task_ids(canvas: Signature, prefix: str, ids: list[str]) -> None:
    """Give every task of ``canvas`` a known id (``<prefix>-<n>``), collected in ``ids``.

    The sweep asks the result backend about these ids when a workflow's end
    is never reported.
    """
    if isinstance(canvas, (_chain, group)):
        for task in canvas.tasks:
            assign_task_ids(task, prefix, ids)
        return
    if isinstance(canvas, chord):
        for task in canvas.tasks:
            assign_task_ids(task, prefix, ids)
        assign_task_ids(canvas.body, prefix, ids)
        return
    task_id = canvas.options.get("task_id") or f"{prefix}-{len(ids) + 1}"
    canvas.set(task_id=task_id)
    ids.append(task_id)


def build_workflow_canvas(
    app: Celery, definition: TriggerDefinition, context: dict[str, Any], execution: dict[str, Any]
) -> tuple[Signature, list[str]]:
    """The workflow's canvas followed by ``cloaca.complete``, failures linked to ``cloaca.failed``.

    Returns the canvas and the ids of all its tasks; the completion task's id
    is the execution id, so its result-backend state says whether the
    workflow ended well.
    """
    workflow = workflows.get(definition.workflow)
    canvas = workflow.build_canvas(app, context)
    if not isinstance(canvas, Signature):
        raise TypeError(
            f"workflow {definition.workflow!r} built {type(canvas).__name__}, not a Celery signature"
        )
    execution_id = execution["execution_id"]
    ids: list[str] = []
    assign_task_ids(canvas, execution_id, ids)
    complete = app.signature(COMPLETE_TASK, kwargs={"execution": execution}).set(task_id=execution_id)
    ids.append(execution_id)
    full: Signature = chain(canvas, complete)
    full.link_error(app.signature(FAILED_TASK, kwargs={"execution": execution}))
    return full, ids


class Poller:
    """Runs polls for one app against one store (one per worker process)."""

    def __init__(self, app: Celery, settings: Settings, store: Store) -> None:
        self.app = app
        self.settings = settings
        self.store = store

    def poll(
        self, name: str, *, now: float | None = None, scheduled: bool = False,
        next_due: float | None = None, hold_by: float | None = None, errors: int | None = None,
        start_by: float | None = None,
    ) -> PollReport:
        """Poll ``name`` once.

        A scheduled poll (sent by the dispatcher for a slot ending at
        ``next_due``) owns the trigger until ``hold_by`` without a lease in the
        store: the next slot is not claimed before then. When the dispatcher
        also sent the row's error count (``errors``) and the trigger keeps no
        ``state``, the poll does not even read its row: a skip costs the store
        nothing. It writes a lease only if it is still running at ``hold_by``
        (the watchdog takes the lease then). A poll that starts after
        ``start_by`` (half an interval after the dispatcher sent it; without
        it, half an interval after its slot) is dropped (``late``). Manual
        polls (CLI, admin, tests) always take a lease.
        """
        try:
            definition = triggers.get(name)
        except UnknownTriggerError as exc:
            logger.warning("%s: not polled: %s (is this worker running the same code as beat?)", name, exc)
            return PollReport(name, "not_polled", "unknown trigger")
        started = time.time() if now is None else now
        lease_seconds = self.settings.poll_hard_time_limit + 5.0
        interval = definition.poll_interval
        if next_due is not None and hold_by is None:
            hold_by = next_due - min(1.0, max(0.02, interval / 4))
        if start_by is None and next_due is not None:
            start_by = next_due - interval / 2
        if start_by is not None and started > start_by:
            # Waited in the queue more than half an interval: the next slot's poll would follow
            # at once, and under load a late poll only makes the next one later. Dropped, at no cost.
            logger.debug("%s: not polled (waited more than half an interval to start)", name)
            return PollReport(name, "not_polled", "late")
        # Manual polls (and old messages without their slot) hold the trigger from the start.
        hold = next_due is None or hold_by is None or started > hold_by
        slot_end = next_due if hold and next_due is not None else None
        token = uuid.uuid4().hex if hold else ""
        taken: PollLease | PollRefusal
        if not hold and errors is not None and not definition.takes_state and next_due is not None:
            taken = PollLease(name, token, next_due, consecutive_errors=int(errors), held=False)
        else:
            try:
                taken = self.store.begin_poll(name, started, lease_seconds, token, hold=hold,
                                              slot_end=slot_end)
                if isinstance(taken, PollRefusal) and taken.reason == "missing":
                    self.store.sync_triggers([spec_of(definition)], started, prune=False)
                    taken = self.store.begin_poll(name, started, lease_seconds, token, hold=hold,
                                                  slot_end=slot_end)
            except Exception as exc:  # noqa: BLE001 - an unreachable store: one line, poll again next interval
                logger.warning("%s: not polled: the store is unreachable: %s", name, one_line(exc))
                return PollReport(name, "not_polled", "store unreachable")
        if isinstance(taken, PollRefusal):
            logger.debug("%s: not polled (%s)", name, taken.reason)
            return PollReport(name, "not_polled", taken.reason)
        watch: LeaseWatch | None = None
        if not taken.held and hold_by is not None:
            store = self.store
            taken = replace(taken, token=uuid.uuid4().hex)
            watch_token = taken.token

            def take() -> bool:
                at = time.time()
                return store.extend_poll_lease(name, watch_token, at + lease_seconds, at)

            watch = watchdog.watch(hold_by, take, name)
        hold_until = started + interval / 2 if scheduled else None
        return self._poll_leased(definition, taken, watch, hold_until)

    def _poll_leased(
        self, definition: TriggerDefinition, lease: PollLease, watch: LeaseWatch | None,
        hold_until: float | None,
    ) -> PollReport:
        name = definition.name
        state = json.loads(json.dumps(lease.state)) if definition.takes_state else None
        report: PollReport
        error: str | None = None
        fired_at: datetime | None = None
        deduplicated = False
        try:
            result = evaluate(definition, state)
        except SoftTimeLimitExceeded:
            error = f"timed out after {self.settings.poll_time_limit:g}s (setting cloaca_poll_time_limit)"
            report = PollReport(name, "error", error)
            logger.warning("%s: poll %s", name, error)
        except Exception as exc:  # noqa: BLE001 - the trigger's own failure is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            report = PollReport(name, "error", error)
            self._log_error(definition, lease, error, exc)
        else:
            if result.is_skip_result():
                report = PollReport(name, "skipped")
            else:
                fired_at = datetime.now(timezone.utc)
                try:
                    report = self._fire(definition, result, fired_at)
                except Exception as exc:  # noqa: BLE001 - a failed fire is recorded on the schedule
                    error = f"fire failed: {type(exc).__name__}: {exc}"
                    report = PollReport(name, "error", error)
                    fired_at = None
                    self._log_error(definition, lease, error, exc)
                else:
                    if report.status == "deduplicated":
                        fired_at = None
                        deduplicated = True
        new_state: dict[str, Any] | None = None
        if state is not None and state != lease.state:
            try:
                new_state = check_json_value(state, f"trigger {name!r}: state")
            except ContextError as exc:
                error = error or str(exc)
                logger.warning("%s: state not saved: %s", name, exc)
                if report.status != "fired":
                    report = PollReport(name, "error", str(exc))
        if watch is not None and watch.cancel():
            lease = replace(lease, held=True)
        try:
            saved = self.store.finish_poll(
                lease,
                PollOutcome(error=error, fired_at=fired_at, state=new_state, deduplicated=deduplicated),
                time.time(), hold_until,
            )
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself; report and go on
            logger.warning("%s: poll outcome not saved: the store is unreachable: %s", name, one_line(exc))
            return report
        if not saved:
            why = "outlived its lease" if lease.held else "found its state changed by another poll"
            logger.warning("%s: poll %s; its outcome and state were not saved", name, why)
        return report

    def _fire(self, definition: TriggerDefinition, result: TriggerResult, fired_at: datetime) -> PollReport:
        """Claim (non-concurrent triggers), write the execution row, publish the canvas.

        Everything that can fail before publishing (unknown workflow, bad
        context, a factory error) fails before any write. A failed publish
        ends the row as ``failed`` and releases the claim.
        """
        execution_id = str(uuid.uuid4())
        context, digest = fire_context(
            definition, result, execution_id, fired_at, self.settings.max_context_bytes
        )
        execution = {
            "execution_id": execution_id, "trigger_name": definition.name,
            "workflow": definition.workflow, "context_hash": digest,
        }
        canvas, task_ids = build_workflow_canvas(self.app, definition, context, execution)
        user_context = result.context.to_dict() if result.context is not None else {}
        now = time.time()
        claim_until = None if definition.allow_concurrent else now + self.settings.claim_ttl
        recorded = self.store.record_fire(
            NewExecution(
                execution_id=execution_id, trigger_name=definition.name,
                workflow=definition.workflow, context=user_context, context_hash=digest,
                task_ids=task_ids, started_at=fired_at,
            ),
            claim_until, now,
        )
        if not recorded:
            logger.debug("%s: deduplicated: an execution with context %s is still active",
                        definition.name, digest[:12])
            return PollReport(definition.name, "deduplicated", definition.workflow, None, digest)
        try:
            canvas.apply_async()
        except Exception as exc:
            self.store.finish_execution(
                execution_id, "failed", f"publish failed: {type(exc).__name__}: {exc}",
                datetime.now(timezone.utc),
            )
            raise
        logger.info(
            "%s: fired workflow %r (execution %s, context %s)",
            definition.name, definition.workflow, execution_id, digest[:12],
        )
        return PollReport(definition.name, "fired", definition.workflow, execution_id, digest)

    @staticmethod
    def _log_error(definition: TriggerDefinition, lease: PollLease, error: str, exc: BaseException) -> None:
        count = lease.consecutive_errors + 1
        if lease.consecutive_errors == 0:
            logger.error("%s: poll failed: %s", definition.name, error, exc_info=exc)
        else:
            logger.warning("%s: poll failed (%d in a row): %s", definition.name, count, error)


def spec_of(definition: TriggerDefinition) -> TriggerSpec:
    return TriggerSpec(
        name=definition.name, workflow=definition.workflow,
        poll_interval=definition.poll_interval, allow_concurrent=definition.allow_concurrent,
    )
