"""Helpers for testing your own triggers and workflows, in process, without Celery running.

``poll_once`` evaluates a trigger once exactly as ``cloaca.poll`` would judge
its result (a wrong return type raises ``TypeError``), without any store or
broker. ``run_workflow`` runs a registered workflow eagerly and returns the
final context; a failing step raises its exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .context import Context
from .polling import evaluate
from .results import TriggerResult
from .triggers import TriggerDefinition, triggers
from .workflows import merge_contexts, workflows


def _definition(trigger: str | Callable[..., Any]) -> TriggerDefinition:
    if isinstance(trigger, str):
        return triggers.get(trigger)
    for definition in triggers:
        if definition.function is trigger:
            return definition
    raise KeyError(f"{trigger!r} is not a registered trigger function; decorate it with @trigger")


def poll_once(trigger: str | Callable[..., Any], state: dict[str, Any] | None = None) -> TriggerResult:
    """Evaluate ``trigger`` (its name or its function) once and return its ``TriggerResult``.

    ``state`` is the dict a ``state``-taking trigger receives; it is changed
    in place, as the store would save it.
    """
    definition = _definition(trigger)
    return evaluate(definition, state if state is not None else {})


def run_workflow(name: str, context: Context | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run workflow ``name`` eagerly with ``context`` and return the final context."""
    from .runner import _eager_app

    definition = workflows.get(name)
    data = context.to_dict() if isinstance(context, Context) else dict(context or {})
    app = _eager_app()
    result = definition.build_canvas(app, data).apply().get(disable_sync_subtasks=False)
    if isinstance(result, (list, dict)):
        return merge_contexts(result, f"workflow {name!r}")
    return {"result": result}
