"""Helpers for testing your own triggers and workflows, in process, without Celery running.

``poll_once`` evaluates a trigger once exactly as ``cloaca.poll`` would judge
its result (a wrong return type raises ``TypeError``), without any store or
broker. ``run_workflow`` runs a registered workflow eagerly and returns the
final context; a failing step raises its exception. ``isolated_registries``
forgets the triggers, workflows and steps declared inside it.

It is also a pytest plugin, as ``celery.contrib.pytest`` is: installing
cloaca-celery registers it (the ``pytest11`` entry point), or a suite names it
in ``pytest_plugins = ["cloaca_celery.testing"]``. Its fixture
``cloaca_registries`` gives a test registries of its own. See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .context import Context, merge_contexts
from .results import TriggerResult
from .steps import tasks
from .triggers import TriggerDefinition, triggers
from .workflows import workflows


@contextmanager
def isolated_registries() -> Iterator[None]:
    """Triggers, workflows and ``@task`` steps declared inside are forgotten when it ends.

    Those declared before it stay declared, inside and after.
    """
    saved = [(registry, registry.snapshot()) for registry in (triggers, workflows, tasks)]
    try:
        yield
    finally:
        for registry, snapshot in saved:
            registry.restore(snapshot)


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
    return definition.evaluate(state if state is not None else {})


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


try:
    import pytest
except ImportError:  # pragma: no cover - the helpers work without pytest
    pass
else:

    @pytest.fixture
    def cloaca_registries() -> Iterator[None]:
        """The triggers, workflows and ``@task`` steps a test declares are forgotten after it.

        Those its modules declared on import stay (see :func:`isolated_registries`).
        Make it ``autouse`` in a ``conftest.py`` to give every test its own.
        """
        with isolated_registries():
            yield
