"""Workflows: ``WorkflowBuilder``, ``register_workflow`` and the registry of workflows.

A workflow is turned into a Celery canvas when a trigger fires. Its steps
are ``@task`` steps (:mod:`cloaca_celery.steps`) or, for ``register_workflow``,
any Celery signature. Steps of a
``WorkflowBuilder`` workflow form a DAG; it is laid out level by level (every
step whose dependencies are done runs in one ``group``), so a step always
starts after all its dependencies and parallel branches join by merging their
contexts in the order the steps were added.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from celery import Celery
from celery.canvas import Signature, _chain, chain, chord, group

from .errors import ConfigurationError, UnknownWorkflowError, WorkflowDefinitionError
from .registries import Registry
from .steps import TaskSpec, tasks

# -- workflow definitions ---------------------------------------------------


@runtime_checkable
class WorkflowDefinition(Protocol):
    """Anything that can turn a fired context into a Celery canvas."""

    name: str
    description: str

    def build_canvas(self, app: Celery, context: dict[str, Any]) -> Signature:
        """The canvas to run for ``context`` (its first step receives ``context``)."""
        ...


@dataclass
class Workflow:
    """A built cloaca workflow: ``@task`` steps in dependency levels."""

    name: str
    description: str
    levels: list[list[TaskSpec]]

    @property
    def task_ids(self) -> list[str]:
        return [spec.id for level in self.levels for spec in level]

    def build_canvas(self, app: Celery, context: dict[str, Any]) -> Signature:
        steps: list[Signature] = []
        for index, level in enumerate(self.levels):
            sigs = [
                app.signature(spec.celery_name, args=(context,) if index == 0 else ())
                for spec in level
            ]
            steps.append(sigs[0] if len(sigs) == 1 else group(sigs))
        return steps[0] if len(steps) == 1 else chain(*steps)


@dataclass
class CanvasWorkflow:
    """An existing Celery signature or chain; the context is its first argument."""

    name: str
    canvas: Signature
    description: str = ""

    def build_canvas(self, app: Celery, context: dict[str, Any]) -> Signature:
        return with_first_argument(self.canvas, context)


def with_first_argument(canvas: Signature, value: Any) -> Signature:
    """A copy of ``canvas`` whose first task(s) receive ``value`` as first argument.

    A chain's first task, every task of a group, a chord's header; a plain
    signature gets it prepended to its partial arguments. Immutable
    signatures (``.si()``) are left as they are: they asked not to receive it.
    """
    if isinstance(canvas, _chain):
        copy = canvas.clone()
        tasks = list(copy.tasks)
        tasks[0] = with_first_argument(tasks[0], value)
        copy.kwargs["tasks"] = tasks
        return copy
    if isinstance(canvas, chord):
        copy = canvas.clone()
        copy.kwargs["header"] = [with_first_argument(t, value) for t in copy.tasks]
        return copy
    if isinstance(canvas, group):
        copy = canvas.clone()
        copy.kwargs["tasks"] = [with_first_argument(t, value) for t in copy.tasks]
        return copy
    if canvas.immutable:
        return canvas.clone()
    cloned: Signature = canvas.clone(args=(value,))
    return cloned


@dataclass
class FactoryWorkflow:
    """A callable ``factory(context_dict) -> Signature``."""

    name: str
    factory: Callable[[dict[str, Any]], Signature]
    description: str = ""

    def build_canvas(self, app: Celery, context: dict[str, Any]) -> Signature:
        built = self.factory(context)
        if not isinstance(built, Signature):
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: its factory returned {type(built).__name__}; "
                "it must return a Celery signature (task.s(...), chain(...), group(...))"
            )
        return built


class WorkflowRegistry(Registry[WorkflowDefinition]):
    """The workflows registered in this process, by name."""

    def add(self, definition: WorkflowDefinition) -> None:
        with self._lock:
            existing = self._find(definition.name)
            if existing is not None and existing is not definition and not _same(existing, definition):
                raise ConfigurationError(
                    f"workflow {definition.name!r} is already registered; "
                    "each workflow needs a unique name"
                )
            self._put(definition.name, definition)

    def get(self, name: str) -> WorkflowDefinition:
        found = self._find(name)
        if found is None:
            raise UnknownWorkflowError(
                f"unknown workflow {name!r}; registered workflows: {self.describe_names()}. "
                "Define it with WorkflowBuilder or register_workflow() in a module this process imports"
            )
        return found

    def describe_names(self) -> str:
        names = self.names()
        return ", ".join(repr(n) for n in names) if names else "none"


def _same(a: WorkflowDefinition, b: WorkflowDefinition) -> bool:
    """Re-registering an equal definition (a module imported twice) is allowed."""
    if isinstance(a, Workflow) and isinstance(b, Workflow):
        return [[s.id for s in lv] for lv in a.levels] == [[s.id for s in lv] for lv in b.levels]
    if isinstance(a, FactoryWorkflow) and isinstance(b, FactoryWorkflow):
        return _origin(a.factory) == _origin(b.factory)
    if isinstance(a, CanvasWorkflow) and isinstance(b, CanvasWorkflow):
        return bool(a.canvas == b.canvas)
    return False


def _origin(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


workflows = WorkflowRegistry()
"""The process-wide workflow registry."""


def register_workflow(
    name: str,
    canvas_or_factory: Signature | Workflow | Callable[[dict[str, Any]], Signature],
    *,
    description: str = "",
) -> WorkflowDefinition:
    """Register a workflow under ``name`` for triggers to fire.

    ``canvas_or_factory`` is a Celery signature or chain (the context dict is
    passed as the first argument of its first task), a callable
    ``factory(context_dict) -> Signature``, or a built :class:`Workflow`.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"register_workflow: name must be a non-empty string, got {name!r}")
    definition: WorkflowDefinition
    if isinstance(canvas_or_factory, Workflow):
        definition = Workflow(name, description or canvas_or_factory.description, canvas_or_factory.levels)
    elif isinstance(canvas_or_factory, Signature):
        definition = CanvasWorkflow(name, canvas_or_factory, description)
    elif callable(canvas_or_factory):
        definition = FactoryWorkflow(name, canvas_or_factory, description)
    else:
        raise ConfigurationError(
            f"workflow {name!r}: register_workflow takes a Celery signature/chain, a "
            f"factory(context) -> Signature, or a built Workflow; got {type(canvas_or_factory).__name__}"
        )
    workflows.add(definition)
    return definition


# -- WorkflowBuilder --------------------------------------------------------


@dataclass
class WorkflowBuilder:
    """Declare a workflow from ``@task`` steps, cloaca style.

    ``with WorkflowBuilder("etl") as b: b.add_task(extract); b.add_task(load)``
    builds and registers the workflow when the block ends without error.
    """

    name: str
    _description: str = ""
    _task_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"WorkflowBuilder: name must be a non-empty string, got {self.name!r}")

    def description(self, text: str) -> WorkflowBuilder:
        self._description = str(text)
        return self

    def add_task(self, id_or_function: object) -> WorkflowBuilder:
        spec = tasks.resolve(id_or_function)
        if spec is None:
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: {id_or_function!r} is not a known @task id or "
                "@task-decorated function; decorate the step with @cloaca.task() first"
            )
        if spec.id in self._task_ids:
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: task {spec.id!r} is added twice"
            )
        self._task_ids.append(spec.id)
        return self

    def build(self) -> Workflow:
        """Check the DAG (no cycle, no missing dependency) and return the workflow."""
        if not self._task_ids:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no tasks; add_task() at least one")
        specs: dict[str, TaskSpec] = {}
        for task_id in self._task_ids:
            spec = tasks.resolve(task_id)
            assert spec is not None
            specs[task_id] = spec
        for spec in specs.values():
            for dep in spec.dependencies:
                if dep not in specs:
                    raise WorkflowDefinitionError(
                        f"workflow {self.name!r}: task {spec.id!r} depends on {dep!r}, "
                        f"which is not in the workflow; add_task({dep!r}) too"
                    )
        return Workflow(self.name, self._description, _levels(self.name, specs, self._task_ids))

    def __enter__(self) -> WorkflowBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            register_workflow(self.name, self.build())


def _levels(name: str, specs: Mapping[str, TaskSpec], order: Sequence[str]) -> list[list[TaskSpec]]:
    """Kahn's algorithm by generations, keeping the order tasks were added."""
    remaining = {tid: set(specs[tid].dependencies) for tid in order}
    levels: list[list[TaskSpec]] = []
    done: set[str] = set()
    while remaining:
        ready = [tid for tid in order if tid in remaining and remaining[tid] <= done]
        if not ready:
            raise WorkflowDefinitionError(
                f"workflow {name!r}: tasks {_describe_cycle(remaining)} depend on each other "
                "in a cycle; remove one of the dependencies"
            )
        levels.append([specs[tid] for tid in ready])
        for tid in ready:
            del remaining[tid]
        done.update(ready)
    return levels


def _describe_cycle(remaining: Mapping[str, set[str]]) -> str:
    start = next(iter(remaining))
    path = [start]
    seen = {start}
    node = start
    while True:
        node = next(d for d in sorted(remaining[node]) if d in remaining)
        if node in seen:
            cycle = [*path[path.index(node):], node]
            return " -> ".join(repr(n) for n in cycle)
        path.append(node)
        seen.add(node)
