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
from .errors import ContextError
from .logs import one_line
from .results import TriggerResult
from .settings import Settings
from .steps import WorkflowStep
from .store import NewExecution, Store
from .triggers import TriggerDefinition
from .workflows import workflows

logger = logging.getLogger("cloaca_celery.firing")

RESERVED_KEYS = ("trigger_name", "triggered_at", "execution_id")

_warned_unfenced: set[str] = set()


@dataclass(frozen=True)
class Fire:
    """What a fire did: ``fired`` (published) or ``deduplicated`` (an active execution holds the claim)."""

    status: str
    context_hash: str
    execution_id: str | None = None
    fired_at: datetime | None = None


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
        """Claim (non-concurrent triggers), write the execution row, publish the canvas.

        Until its first step starts, the execution waits in the broker: the
        sweep looks at it only after ``cloaca_queued_timeout``.
        """
        now = self.clock.now()
        fired_at = datetime.fromtimestamp(now, tz=timezone.utc)
        execution_id = str(uuid.uuid4())
        context, digest = fire_context(
            definition, result, execution_id, fired_at, self.settings.max_context_bytes
        )
        execution = {
            "execution_id": execution_id, "trigger_name": definition.name,
            "workflow": definition.workflow, "context_hash": digest,
        }
        canvas, task_ids = self.canvas(definition, context, execution)
        user_context = result.context.to_dict() if result.context is not None else {}
        recorded = self.store.record_fire(
            NewExecution(
                execution_id=execution_id, trigger_name=definition.name,
                workflow=definition.workflow, context=user_context, context_hash=digest,
                task_ids=task_ids, started_at=fired_at,
            ),
            claim=not definition.allow_concurrent, now=now, deadline=now + self.settings.queued_timeout,
        )
        if not recorded:
            logger.debug("%s: deduplicated: an execution with context %s is still active",
                         definition.name, digest[:12])
            return Fire("deduplicated", digest)
        try:
            canvas.apply_async()
        except Exception as exc:
            self.store.finish_execution(
                execution_id, "failed", f"publish failed: {one_line(exc)}",
                datetime.fromtimestamp(self.clock.now(), tz=timezone.utc),
            )
            raise
        logger.info(
            "%s: fired workflow %r (execution %s, context %s)",
            definition.name, definition.workflow, execution_id, digest[:12],
        )
        return Fire("fired", digest, execution_id, fired_at)
