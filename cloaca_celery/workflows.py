"""Workflows: cloaca-style ``@task`` steps, ``WorkflowBuilder`` and ``register_workflow``.

A workflow is turned into a Celery canvas when a trigger fires. Steps of a
``WorkflowBuilder`` workflow form a DAG; it is laid out level by level (every
step whose dependencies are done runs in one ``group``), so a step always
starts after all its dependencies and parallel branches join by merging their
contexts in the order the steps were added.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from celery import Celery, current_task, shared_task
from celery.canvas import Signature, _chain, chain, chord, group
from celery.exceptions import Ignore

from .background import task_ends
from .context import Context, check_json_value
from .errors import ConfigurationError, UnknownWorkflowError, WorkflowDefinitionError

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("cloaca_celery.workflows")


# -- @task ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A ``@task`` step: its cloaca id, Celery task name and dependencies."""

    id: str
    celery_name: str
    dependencies: tuple[str, ...]
    function: Callable[..., Any]

    @property
    def origin(self) -> str:
        fn = self.function
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class TaskRegistry:
    """The ``@task`` steps defined in this process, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, TaskSpec] = {}
        self._by_object: dict[int, TaskSpec] = {}
        self._objects: list[object] = []
        self._lock = threading.Lock()

    def add(self, spec: TaskSpec, *objects: object) -> None:
        with self._lock:
            existing = self._by_id.get(spec.id)
            if existing is not None and existing.origin != spec.origin:
                raise ConfigurationError(
                    f"task id {spec.id!r} is already used by {existing.origin}; "
                    f"give {spec.origin} another id with @task(id=...)"
                )
            self._by_id[spec.id] = spec
            for obj in objects:
                self._by_object[id(obj)] = spec
                self._objects.append(obj)

    def resolve(self, ref: object) -> TaskSpec | None:
        """The spec for a task id or a ``@task``-decorated object, if known.

        ``type()`` rather than ``isinstance()``: a ``@task`` object is a Celery
        proxy, and ``isinstance`` would evaluate it against the current app.
        """
        if type(ref) is str:
            return self._by_id.get(ref)
        return self._by_object.get(id(ref))

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_object.clear()
            self._objects.clear()


tasks = TaskRegistry()


def merge_contexts(value: Any, where: str) -> dict[str, Any]:
    """Turn a step's input into one context dict.

    A dict or ``Context`` is taken as it is; a list (the results of parallel
    branches) is merged in order, later branches winning on equal keys;
    ``None`` is an empty context.
    """
    if value is None:
        return {}
    if isinstance(value, Context):
        return value.to_dict()
    if isinstance(value, Mapping):
        checked: dict[str, Any] = check_json_value(value, f"{where}: context")
        return checked
    if isinstance(value, (list, tuple)):
        merged: dict[str, Any] = {}
        for item in value:
            merged.update(merge_contexts(item, where))
        return merged
    raise TypeError(
        f"{where}: expected a context (dict), got {type(value).__name__}; a cloaca "
        "@task receives the context returned by the step before it"
    )


def _step_output(result: Any, context: Context, task_id: str) -> dict[str, Any]:
    if result is None:
        return context.to_dict()
    if isinstance(result, Context):
        return result.to_dict()
    if isinstance(result, Mapping):
        checked: dict[str, Any] = check_json_value(result, f"task {task_id!r}: returned context")
        return checked
    raise TypeError(
        f"task {task_id!r} returned {type(result).__name__}; a cloaca @task must "
        "return a Context, a dict or None (context unchanged)"
    )


def task(
    id: str | None = None,  # noqa: A002 - the cloaca API calls it id
    dependencies: Iterable[object] = (),
    **celery_options: Any,
) -> Callable[[F], Any]:
    """Declare a workflow step ``def step(context): ...``.

    The function receives a :class:`Context` and returns a ``Context``, a
    dict, or ``None`` (context unchanged). It becomes a real Celery task
    (a ``shared_task``, so every app has it); ``celery_options`` are passed
    to Celery (``name``, ``queue``, ``max_retries``, ``rate_limit``...).
    ``track_started`` defaults to True so the claim registry can tell a
    running step from a lost one; the STARTED state is written beside the
    step, on a background thread, not before it (and never after its end).
    ``dependencies`` are task ids or other ``@task`` steps.
    """
    if callable(id) and not isinstance(id, str):
        raise ConfigurationError("@task needs parentheses: write @task() or @task(id='...')")
    deps_given = [dependencies] if type(dependencies) is str else list(dependencies)

    def decorate(fn: F) -> Any:
        if not callable(fn):
            raise ConfigurationError(f"@task must decorate a function, not {fn!r}")
        task_id = id if id is not None else getattr(fn, "__name__", None)
        if not isinstance(task_id, str) or not task_id:
            raise ConfigurationError(f"@task on {fn!r}: id must be a non-empty string")
        _check_step_signature(fn, task_id)
        dep_ids: list[str] = []
        for dep in deps_given:
            if type(dep) is str:
                dep_ids.append(dep)
                continue
            spec = tasks.resolve(dep)
            if spec is None:
                raise ConfigurationError(
                    f"task {task_id!r}: dependency {dep!r} is neither a task id nor a @task step"
                )
            dep_ids.append(spec.id)
        celery_name = celery_options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
        if celery_options.get("serializer") not in (None, "json"):
            raise ConfigurationError(
                f"task {task_id!r}: serializer={celery_options['serializer']!r} is refused; "
                "cloaca workflows only use JSON"
            )

        def run(context: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                ctx = Context(merge_contexts(context, f"task {task_id!r}"))
                if _execution_has_ended(ctx, task_id):
                    raise Ignore()
                return _step_output(fn(ctx), ctx, task_id)
            finally:
                # Before Celery stores the outcome: a STARTED not yet written never follows it.
                request_id = getattr(getattr(current_task, "request", None), "id", None)
                if request_id:
                    task_ends(request_id)

        run.__name__ = getattr(fn, "__name__", task_id)
        run.__qualname__ = getattr(fn, "__qualname__", task_id)
        run.__module__ = getattr(fn, "__module__", __name__)
        run.__doc__ = fn.__doc__
        # STARTED is written by cloaca beside the step (see installation), not by Celery before it.
        options = {**celery_options, "track_started": False,
                   "cloaca_track_started": bool(celery_options.get("track_started", True))}
        celery_task = shared_task(name=celery_name, **options)(run)
        spec = TaskSpec(task_id, celery_name, tuple(dep_ids), fn)
        tasks.add(spec, celery_task, fn)
        return celery_task

    return decorate


def _execution_has_ended(context: Context, task_id: str) -> bool:
    """Whether this step belongs to a fired execution that has already ended.

    A step message can outlive its execution: a worker dies with it prefetched,
    the sweep ends the execution as ``lost`` (freeing its claim), and the broker
    redelivers the message later. Running it then would run the same work twice
    at once, so such a step is skipped (``Ignore``). Outside a fired workflow,
    or if the store cannot say, the step runs.
    """
    execution_id = context.get("execution_id")
    if not isinstance(execution_id, str) or "trigger_name" not in context:
        return False
    from .installation import installed_on
    from .store import FINAL_STATUSES

    # Only a message the broker delivers again can outlive its execution; a first
    # delivery (Redis, RabbitMQ and kombu's virtual transports say which) needs no look.
    delivery = getattr(getattr(current_task, "request", None), "delivery_info", None) or {}
    if delivery.get("redelivered", True) is False:
        return False
    app = getattr(current_task, "app", None)
    installation = installed_on(app) if app is not None else None
    if installation is None:
        return False
    try:
        status = installation.store.get_execution(execution_id)["status"]
    except Exception:  # noqa: BLE001 - unknown (pruned, store down): let the step run
        return False
    if status in FINAL_STATUSES:
        logger.warning(
            "%s: step %r of execution %s not run: the execution already ended (%s)",
            context.get("trigger_name"), task_id, execution_id, status,
        )
        return True
    return False


def _check_step_signature(fn: Callable[..., Any], task_id: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None)
    except TypeError:
        raise ConfigurationError(
            f"task {task_id!r}: a cloaca @task takes one argument, the context: "
            f"def {getattr(fn, '__name__', task_id)}(context): ..."
        ) from None


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


class WorkflowRegistry:
    """The workflows registered in this process, by name."""

    def __init__(self) -> None:
        self._items: dict[str, WorkflowDefinition] = {}
        self._lock = threading.Lock()

    def add(self, definition: WorkflowDefinition) -> None:
        with self._lock:
            existing = self._items.get(definition.name)
            if existing is not None and existing is not definition and not _same(existing, definition):
                raise ConfigurationError(
                    f"workflow {definition.name!r} is already registered; "
                    "each workflow needs a unique name"
                )
            self._items[definition.name] = definition

    def get(self, name: str) -> WorkflowDefinition:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownWorkflowError(
                f"unknown workflow {name!r}; registered workflows: {self.describe_names()}. "
                "Define it with WorkflowBuilder or register_workflow() in a module this process imports"
            ) from None

    def describe_names(self) -> str:
        names = sorted(self._items)
        return ", ".join(repr(n) for n in names) if names else "none"

    def names(self) -> list[str]:
        return sorted(self._items)

    def remove(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


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
