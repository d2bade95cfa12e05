"""Firing a workflow: claim the context, write the execution row, publish the canvas.

A fire builds everything that can fail (the context, the workflow's canvas)
before it writes anything; then, in one store transaction, it claims
(trigger, context hash) for a non-concurrent trigger and writes the execution
row; then it publishes the canvas. A failed publish ends the row ``failed``
and releases the claim: nothing is half-enqueued.

Every fired canvas ends in ``complete_task`` (its id is the execution id) and
links every step's failure to ``failed_task``: those report the execution's
end. Every task of it gets a known id, ``<execution_id>-<n>``, so the sweep
can ask the result backend about each.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chain, chord, group

from .clock import StoreClock
from .context import canonical_json, context_hash
from .errors import ContextError, UnknownTriggerError
from .logs import one_line
from .results import TriggerResult
from .settings import Settings
from .steps import WorkflowStep
from .store import ACTIVE_STATUSES, Held, NewExecution, PendingFire, Store
from .triggers import BUFFERING, TriggerDefinition, triggers
from .workflows import workflows

logger = logging.getLogger("cloaca_celery.firing")

RESERVED_KEYS = ("trigger_name", "triggered_at", "execution_id")

_warned_unfenced: set[str] = set()


@dataclass(frozen=True)
class Fire:
    """What a fire did: ``fired`` (published), ``deduplicated`` (skipped: the same work is active),
    ``buffered`` (pending until it has ended) or ``cancelling`` (pending, the active one revoked).

    For a fire held back, ``execution_id`` is the active execution's.
    """

    status: str
    context_hash: str
    execution_id: str | None = None
    fired_at: datetime | None = None
    dropped: int = 0
    cancelled: bool = False


def workflow_context(
    name: str, user: dict[str, Any], execution_id: str, triggered_at: datetime
) -> dict[str, Any]:
    """The context the workflow receives: the fired one plus ``trigger_name``, ``triggered_at`` and
    ``execution_id`` (reserved: a fired key of the same name is replaced, with a warning)."""
    clashes = [k for k in RESERVED_KEYS if k in user]
    if clashes:
        logger.warning("%s: context keys %s are reserved and replaced by cloaca", name, ", ".join(clashes))
    added = {"trigger_name": name, "triggered_at": triggered_at.isoformat(), "execution_id": execution_id}
    return {**user, **added}


def check_size(name: str, user: dict[str, Any], max_bytes: int) -> None:
    size = len(canonical_json(user).encode("utf-8"))
    if size > max_bytes:
        raise ContextError(
            f"trigger {name!r}: fired a context of {size} bytes, over the limit of {max_bytes} "
            "(setting cloaca_max_context_bytes); pass a reference (a path, an id) instead of the data"
        )


def assign_task_ids(canvas: Signature, prefix: str, ids: list[str], names: list[str]) -> None:
    """Give every task of ``canvas`` a known id (``<prefix>-<n>``), collected in ``ids`` (their
    task names in ``names``)."""
    if isinstance(canvas, (_chain, group)):
        for task in canvas.tasks:
            assign_task_ids(task, prefix, ids, names)
        return
    if isinstance(canvas, chord):
        for task in canvas.tasks:
            assign_task_ids(task, prefix, ids, names)
        assign_task_ids(canvas.body, prefix, ids, names)
        return
    task_id = canvas.options.get("task_id") or f"{prefix}-{len(ids) + 1}"
    canvas.set(task_id=task_id)
    ids.append(task_id)
    names.append(str(canvas.task))


class Firer:
    """Fires workflows for one app against one store."""

    def __init__(self, app: Celery, settings: Settings, store: Store, clock: StoreClock,
                 complete_task: str, failed_task: str) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.clock = clock
        self.complete_task = complete_task
        self.failed_task = failed_task

    def canvas(
        self, definition: TriggerDefinition, context: dict[str, Any], execution: dict[str, Any]
    ) -> tuple[Signature, list[str]]:
        """The workflow's canvas followed by the completion task, failures linked to the failure task.

        Returns the canvas and the ids of all its tasks; the completion
        task's id is the execution id, so its result-backend state says
        whether the workflow ended well.
        """
        canvas = workflows.get(definition.workflow).build_canvas(self.app, context)
        if not isinstance(canvas, Signature):
            raise TypeError(
                f"workflow {definition.workflow!r} built {type(canvas).__name__}, not a Celery signature"
            )
        execution_id = execution["execution_id"]
        ids: list[str] = []
        names: list[str] = []
        assign_task_ids(canvas, execution_id, ids, names)
        self._warn_unfenced(definition.workflow, names)
        complete = self.app.signature(self.complete_task, kwargs={"execution": execution})
        complete.set(task_id=execution_id)
        ids.append(execution_id)
        full: Signature = chain(canvas, complete)
        full.link_error(self.app.signature(self.failed_task, kwargs={"execution": execution}))
        return full, ids

    def _warn_unfenced(self, workflow: str, names: list[str]) -> None:
        """Say once per workflow which of its tasks are plain Celery tasks, which nothing fences."""
        if workflow in _warned_unfenced:
            return
        _warned_unfenced.add(workflow)
        plain = sorted({n for n in names if not isinstance(self.app.tasks.get(n), WorkflowStep)})
        if plain:
            logger.warning(
                "workflow %r: its tasks %s are plain Celery tasks: a message of one of them redelivered "
                "after its execution ended would still run. Declare them with "
                "@app.task(base=cloaca_celery.WorkflowStep) to have every delivery checked",
                workflow, ", ".join(plain),
            )

    def fire(self, definition: TriggerDefinition, result: TriggerResult) -> Fire:
        """Claim the work (unless ``overlap="allow"``), write the execution row, publish the canvas.

        While another execution of the same work is active, the trigger's
        overlap policy decides: ``skip`` drops the fire (``deduplicated``);
        ``buffer_one``, ``buffer_all`` keep it pending in the store
        (``buffered``); ``cancel_other`` and ``terminate_other`` keep it pending
        and revoke the active execution (``cancelling``). A pending fire starts
        when the active execution has ended (:meth:`start_pending`). Until its
        first step starts, an execution waits in the broker: the sweep looks at
        it only after ``cloaca_queued_timeout``.
        """
        user_context = result.context.to_dict() if result.context is not None else {}
        check_size(definition.name, user_context, self.settings.max_context_bytes)
        work = definition.dedup_hash(user_context)
        digest = context_hash(user_context)
        for _ in range(3):  # the active execution may end between the claim and the pending write
            fire = self._record_and_publish(definition, user_context, work)
            if fire is not None:
                return fire
            if definition.overlap not in BUFFERING:
                logger.debug("%s: deduplicated: an execution of work %s is still active",
                             definition.name, work[:12])
                return Fire("deduplicated", digest)
            held = self.store.hold_pending(
                PendingFire(str(uuid.uuid4()), definition.name, work, user_context, digest, self.clock.now()),
                replace=definition.overlap != "buffer_all", max_pending=definition.max_pending,
            )
            if held.status == "pending":
                return self._held(definition, work, digest, held)
        return Fire("deduplicated", digest)

    def _record_and_publish(self, definition: TriggerDefinition, user_context: dict[str, Any], work: str,
                            pending_id: str | None = None) -> Fire | None:
        """Write the execution (taking its claim) and publish it; ``None`` if the work's claim is held.

        With ``pending_id``, the pending fire is started: the pending row is
        deleted in the same transaction.
        """
        now = self.clock.now()
        fired_at = datetime.fromtimestamp(now, tz=timezone.utc)
        execution_id = str(uuid.uuid4())
        context = workflow_context(definition.name, user_context, execution_id, fired_at)
        digest = context_hash(user_context)
        execution = {
            "execution_id": execution_id, "trigger_name": definition.name,
            "workflow": definition.workflow, "context_hash": digest, "dedup_hash": work,
        }
        canvas, task_ids = self.canvas(definition, context, execution)
        row = NewExecution(
            execution_id=execution_id, trigger_name=definition.name, workflow=definition.workflow,
            context=user_context, context_hash=digest, task_ids=task_ids, started_at=fired_at,
            dedup_hash=work,
        )
        deadline = now + self.settings.queued_timeout
        if pending_id is not None:
            recorded = self.store.start_pending(pending_id, row, now=now, deadline=deadline)
        else:
            recorded = self.store.record_fire(row, claim=not definition.allow_concurrent, now=now,
                                              deadline=deadline)
        if not recorded:
            return None
        try:
            canvas.apply_async()
        except Exception as exc:
            self.store.finish_execution(
                execution_id, "failed", f"publish failed: {one_line(exc)}",
                datetime.fromtimestamp(self.clock.now(), tz=timezone.utc),
            )
            self.start_pending(definition.name, work)
            raise
        logger.info(
            "%s: %s workflow %r (execution %s, context %s)", definition.name,
            "fired" if pending_id is None else "started the pending fire of", definition.workflow,
            execution_id, digest[:12],
        )
        return Fire("fired", digest, execution_id, fired_at)

    def _held(self, definition: TriggerDefinition, work: str, digest: str, held: Held) -> Fire:
        """The fire waits, pending, behind ``held.holder``; the cancelling policies revoke the holder."""
        if held.dropped and definition.overlap == "buffer_all":
            logger.warning("%s: %d pending fire(s) of work %s dropped, the oldest: more than max_pending=%d",
                           definition.name, held.dropped, work[:12], definition.max_pending)
        if definition.overlap not in ("cancel_other", "terminate_other") or held.holder is None:
            return Fire("buffered", digest, held.holder, dropped=held.dropped)
        holder = self.store.get_execution(held.holder)
        if holder.get("status") in ACTIVE_STATUSES and not holder.get("ending_status"):
            terminate = definition.overlap == "terminate_other"
            reason = f"cancelled by a newer fire of the same work (overlap={definition.overlap!r})"
            ended = self.store.request_end(held.holder, "revoked", reason, self.clock.now())
            self.app.control.revoke(list(held.holder_task_ids), terminate=terminate)
            logger.info("%s: revoked execution %s%s for a newer fire of work %s", definition.name,
                        held.holder, " (terminating its running step)" if terminate else "", work[:12])
            if ended:
                self.start_pending(definition.name, work)
            return Fire("cancelling", digest, held.holder, dropped=held.dropped, cancelled=True)
        return Fire("cancelling", digest, held.holder, dropped=held.dropped)

    def start_pending(self, trigger_name: str, work: str) -> str | None:
        """Start the oldest pending fire of ``work`` if no execution of it is active; its execution id.

        Called by whichever process saw an execution of the work end (and by
        the sweep for any pending fire whose work is free): the pending row
        is deleted in the transaction that claims the work, so a pending fire
        starts exactly once.
        """
        try:
            definition = triggers.get(trigger_name)
        except UnknownTriggerError:
            return None  # a worker that defines it will start it (or the sweep will)
        for _ in range(3):
            pending = self.store.next_pending(trigger_name, work)
            if pending is None:
                return None
            fire = self._record_and_publish(definition, dict(pending.context), work, pending.pending_id)
            if fire is not None:
                return fire.execution_id
            if self.store.next_pending(trigger_name, work) == pending:
                return None  # the work is claimed: the execution holding it will start this when it ends
        return None

    def after_end(self, execution_id: str, trigger_name: str, work: str | None = None) -> None:
        """An execution ended: start the next pending fire of its work, if its trigger keeps any."""
        try:
            definition = triggers.get(trigger_name)
        except UnknownTriggerError:
            return
        if definition.overlap not in BUFFERING:
            return
        if work is None:
            work = self.store.get_execution(execution_id)["dedup_hash"]
        started = self.start_pending(trigger_name, work)
        if started:
            logger.info("%s: execution %s ended; its work's pending fire started as %s",
                        trigger_name, execution_id, started)
