"""Workflow steps: the ``@task`` decorator, and the runtime around every step of a fired workflow.

Every step of a fired workflow carries its execution in its first argument
(the context). While a step runs, its execution holds a lease that this
process's heartbeat renews (:mod:`cloaca_celery.leases`); its start and end
are written to the store (``start_step`` / ``end_step``), so the sweep knows
whether any step of an execution can still be running.

A ``@task`` step is a real Celery task whose class is :class:`WorkflowStep`.
Before the user's function runs, on every delivery, it asks the store to
start the step: the answer says whether the execution is still the live
holder of its claim, and a step of an execution that has ended (or is ending
after another step failed) does not run (``Ignore``, logged). It also records
the step's STARTED state beside it, on a background thread, instead of
Celery's ``track_started`` write before its first line, and never after its
end. A step raising ``Retry`` keeps its execution's lease until its retry is
due, plus the lease.

Plain Celery tasks of a ``register_workflow`` canvas get the same start, end
and heartbeat through signals (:func:`connect`), but a signal cannot keep a
task from running: declare them with ``base=cloaca.WorkflowStep`` to fence them.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from celery import Celery, Task, shared_task, signals, states
from celery.exceptions import Ignore, Retry

from .background import defer_until_end, deferred, task_ends
from .binding import Runtime, runtime_of
from .context import Context, check_json_value, merge_contexts
from .errors import ConfigurationError
from .logs import one_line
from .registries import Registry

F = TypeVar("F", bound=Callable[..., Any])

EXIT_DRAIN_SECONDS = 5.0
"""How long a terminated step's process waits for its earlier deferred store writes before it exits."""

logger = logging.getLogger("cloaca_celery.steps")


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


class StepRegistry(Registry[TaskSpec]):
    """The ``@task`` steps defined in this process, by id, and by the objects that stand for them."""

    def __init__(self) -> None:
        super().__init__()
        self._by_object: dict[int, TaskSpec] = {}
        self._objects: list[object] = []  # kept alive, so that their ids stay theirs

    def add(self, spec: TaskSpec, *objects: object) -> None:
        with self._lock:
            existing = self._find(spec.id)
            if existing is not None and existing.origin != spec.origin:
                raise ConfigurationError(
                    f"task id {spec.id!r} is already used by {existing.origin}; "
                    f"give {spec.origin} another id with @task(id=...)"
                )
            self._put(spec.id, spec)
            for obj in objects:
                self._by_object[id(obj)] = spec
                self._objects.append(obj)

    def resolve(self, ref: object) -> TaskSpec | None:
        """The spec for a task id or a ``@task``-decorated object, if known.

        ``type()`` rather than ``isinstance()``: a ``@task`` object is a Celery
        proxy, and ``isinstance`` would evaluate it against the current app.
        """
        if type(ref) is str:
            return self._find(ref)
        return self._by_object.get(id(ref))

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self._by_object.clear()
            self._objects.clear()

    def snapshot(self) -> Any:
        with self._lock:
            return (super().snapshot(), dict(self._by_object), list(self._objects))

    def restore(self, snapshot: Any) -> None:
        items, by_object, objects = snapshot
        with self._lock:
            super().restore(items)
            self._by_object = dict(by_object)
            self._objects = list(objects)


tasks = StepRegistry()
"""The process-wide registry of ``@task`` steps."""


def execution_of(args: Any) -> tuple[str, str] | None:
    """``(execution id, trigger name)`` carried by a step's first argument (its context), if any."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):
        execution_id, trigger_name = first.get("execution_id"), first.get("trigger_name")
        if isinstance(execution_id, str) and isinstance(trigger_name, str):
            return execution_id, trigger_name
    return None


def fired_at_of(args: Any, execution_id: str, task_id: str, retries: int = 0) -> float | None:
    """When the execution was fired (store clock, epoch seconds), if this is the first delivery of
    its first step (``<execution_id>-1``): the fire -> first step latency is measured from it."""
    if task_id != f"{execution_id}-1" or retries or not args or not isinstance(args[0], dict):
        return None
    triggered_at = args[0].get("triggered_at")
    try:
        return datetime.fromisoformat(triggered_at).timestamp() if isinstance(triggered_at, str) else None
    except ValueError:
        return None


def step_starts(runtime: Runtime, execution_id: str, task_id: str, fired_at: float | None = None,
                trigger_name: str = "") -> bool:
    """Write the step's start and take its lease; ``False`` if its execution has ended or is ending.

    A store that cannot be reached cannot say: the step runs (no other copy
    can start meanwhile, since firing needs the store too). With ``fired_at``
    (the first step), the fire -> first step latency is counted in the
    trigger's health counts.
    """
    clock, leases = runtime.clock, runtime.leases
    try:
        now = clock.now()
        live = runtime.store.start_step(execution_id, task_id, now, now + leases.ttl)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.warning("execution %s: the start of step %s was not recorded, the store is unreachable "
                       "(%s); the step runs", execution_id, task_id, one_line(exc))
        live = True
    if live:
        leases.hold(execution_id)
        if fired_at is not None and trigger_name:
            runtime.health.latency(trigger_name, fired_at, clock.now())
    return live


def step_ends(runtime: Runtime, execution_id: str, trigger_name: str, task_id: str,
              retry_at: float | None = None, eager: bool = False, exiting: bool = False) -> None:
    """Release the step's lease here and record its end in the store (beside, not in the way).

    ``retry_at`` (store clock): the step waits to retry until then, and keeps
    its execution's lease until then plus the lease. ``exiting``: the process
    exits once the step returns (its step was terminated), so the end is
    recorded now, after the writes deferred before it.
    """
    runtime.leases.release(execution_id)
    clock, store, settings = runtime.clock, runtime.store, runtime.settings

    def record() -> None:
        now = clock.now()
        retry_until = None if retry_at is None else retry_at + settings.lease
        if store.end_step(execution_id, task_id, now, now + settings.queued_timeout, retry_until):
            runtime.after_end(execution_id, trigger_name)  # this end ended an execution that was ending

    if exiting:
        if not deferred.drain(EXIT_DRAIN_SECONDS):
            logger.warning("execution %s: step %s ends as its process exits, before this process's "
                           "earlier store writes did", execution_id, task_id)
        try:
            record()
        except Exception as exc:  # noqa: BLE001 - the sweep ends the execution once its lease expires
            logger.warning("execution %s: end of step %s not recorded: %s", execution_id, task_id,
                           one_line(exc))
    elif eager:
        record()
    else:
        deferred.defer(record, f"execution {execution_id}: end of step {task_id}")


def retry_at(runtime: Runtime, when: Any) -> float:
    """When a ``Retry`` is due, on the store's clock (``when`` is a countdown or a local datetime)."""
    now = runtime.clock.now()
    if isinstance(when, datetime):
        moment = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        return now + max(0.0, moment.timestamp() - datetime.now(timezone.utc).timestamp())
    try:
        return now + max(0.0, float(when or 0))
    except (TypeError, ValueError):
        return now


class WorkflowStep(Task):  # type: ignore[misc]
    """The Celery task class of cloaca's ``@task`` steps (see the module docstring)."""

    track_started = False
    cloaca_track_started = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        request = self.request
        step = execution_of(args)
        runtime = runtime_of(self.app)
        if step is not None and runtime is not None and task_id:
            execution_id, trigger_name = step
            fired_at = fired_at_of(args, execution_id, task_id, request.retries or 0)
            if not step_starts(runtime, execution_id, task_id, fired_at, trigger_name):
                logger.warning(
                    "%s: step %r of execution %s not run: the execution has ended, or is ending "
                    "after another of its steps failed", trigger_name, self.name, execution_id,
                )
                raise Ignore()
            request.cloaca_step = step
        if self.cloaca_track_started and not request.is_eager and task_id:
            self._record_started(task_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        retrying: Retry | None = None
        exiting = False
        try:
            return super().__call__(*args, **kwargs)
        except Retry as exc:
            retrying = exc
            raise
        except BaseException as exc:
            # SystemExit: billiard's answer to SIGTERM (revoke(terminate=True)) in a pool process,
            # which exits right after: the end is recorded here, not on a thread it would cut.
            exiting = not isinstance(exc, Exception)
            raise
        finally:
            request = self.request
            # Before Celery stores the outcome: a STARTED not yet written never follows it.
            if request.id:
                task_ends(request.id)
            step = getattr(request, "cloaca_step", None)
            runtime = runtime_of(self.app)
            if step is not None and runtime is not None:
                at = None if retrying is None else retry_at(runtime, retrying.when)
                execution_id, trigger_name = step
                step_ends(runtime, execution_id, trigger_name, request.id, at,
                          eager=bool(request.is_eager), exiting=exiting)

    def _record_started(self, task_id: str) -> None:
        """Store the STARTED state (what Celery's ``track_started`` stores), beside the step.

        Celery writes it before the task runs, a result-backend round trip on
        the way to the step's first line; here it is written on the
        background thread, and not at all if the step has ended first.
        """
        request = self.request
        meta = {"pid": os.getpid(), "hostname": request.hostname or socket.gethostname()}
        backend = self.backend

        def store() -> None:
            backend.store_result(task_id, meta, states.STARTED, request=request)

        defer_until_end(task_id, store, f"task {task_id}: its STARTED state")


def task(
    id: str | None = None,  # noqa: A002 - the cloaca API calls it id
    dependencies: Iterable[object] = (),
    **celery_options: Any,
) -> Callable[[F], Any]:
    """Declare a workflow step ``def step(context): ...``.

    The function receives a :class:`Context` and returns a ``Context``, a
    dict, or ``None`` (context unchanged). It becomes a real Celery task of
    the class :class:`WorkflowStep` (a ``shared_task``, so every app has it);
    ``celery_options`` are passed to Celery (``name``, ``queue``,
    ``max_retries``, ``rate_limit``...). ``track_started`` (default True)
    records the step's STARTED state in the result backend, written beside
    the step rather than before it. ``dependencies`` are task ids or other
    ``@task`` steps.
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
        options = dict(celery_options)
        celery_name = options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
        if options.get("serializer") not in (None, "json"):
            raise ConfigurationError(
                f"task {task_id!r}: serializer={options['serializer']!r} is refused; "
                "cloaca workflows only use JSON"
            )

        def run(context: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
            ctx = Context(merge_contexts(context, f"task {task_id!r}"))
            return _step_output(fn(ctx), ctx, task_id)

        run.__name__ = getattr(fn, "__name__", task_id)
        run.__qualname__ = getattr(fn, "__qualname__", task_id)
        run.__module__ = getattr(fn, "__module__", __name__)
        run.__doc__ = fn.__doc__
        options["cloaca_track_started"] = bool(options.pop("track_started", True))
        celery_task = shared_task(name=celery_name, base=WorkflowStep, **options)(run)
        spec = TaskSpec(task_id, celery_name, tuple(dep_ids), fn)
        tasks.add(spec, celery_task, fn)
        return celery_task

    return decorate


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


def connect(app: Celery, skip: frozenset[str]) -> None:
    """Connect the signals that follow the steps of ``app``'s fired workflows.

    For plain Celery tasks (not :class:`WorkflowStep`): the step's start,
    end and heartbeat. For every step: a revoke ends its execution
    ``revoked`` once no other step of it runs. ``skip`` names the tasks that
    carry an execution but are no step of it (cloaca's own ``complete`` and
    ``failed``).
    """

    def plain_step(task: Any, args: Any) -> tuple[Runtime, str, str] | None:
        if getattr(task, "app", None) is not app or getattr(task, "name", None) in skip:
            return None
        if isinstance(task, WorkflowStep):
            return None
        step = execution_of(args)
        runtime = runtime_of(app)
        if step is None or runtime is None:
            return None
        return runtime, *step

    def on_task_prerun(task_id: str = "", task: Any = None, args: Any = (), **_: Any) -> None:
        found = plain_step(task, args)
        if found is not None and task_id:
            retries = getattr(getattr(task, "request", None), "retries", 0) or 0
            step_starts(found[0], found[1], task_id, fired_at_of(args, found[1], task_id, retries), found[2])

    def on_task_postrun(task_id: str = "", task: Any = None, args: Any = (), retval: Any = None,
                        state: str | None = None, **_: Any) -> None:
        task_ends(task_id)  # normally done by the step itself; this covers a step that never ran
        found = plain_step(task, args)
        if found is not None and task_id:
            runtime, execution_id, trigger_name = found
            retrying = state == states.RETRY and isinstance(retval, Retry)
            at = retry_at(runtime, retval.when) if retrying else None
            eager = bool(getattr(task.request, "is_eager", False))
            step_ends(runtime, execution_id, trigger_name, task_id, at, eager=eager)

    def on_task_revoked(request: Any = None, sender: Any = None, **_: Any) -> None:
        step = execution_of(getattr(request, "args", None))
        runtime = runtime_of(app)
        if step is None or runtime is None or getattr(sender, "app", app) is not app:
            return
        execution_id, trigger_name = step
        task_id = getattr(request, "id", None)
        if runtime.store.request_end(
            execution_id, "revoked", f"task {task_id or '?'} was revoked", runtime.clock.now(), task_id,
        ):
            runtime.after_end(execution_id, trigger_name)

    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.task_revoked.connect(on_task_revoked, weak=False)
