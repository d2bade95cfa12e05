"""The ``@trigger`` decorator and the registry of trigger definitions.

A trigger is a cheap function polled by Celery. Decorating it records a
:class:`TriggerDefinition` in this process's registry and returns the function
unchanged, so it stays callable (and testable) as plain Python.
"""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .durations import Duration, parse_duration
from .errors import ConfigurationError, UnknownTriggerError
from .registries import Registry
from .results import TriggerResult
from .store import TriggerSpec

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_POLL_INTERVAL = "5s"

HOW_TRIGGERS_ARE_FOUND = (
    "Triggers are found in the module that -A names and the modules it imports, in the modules "
    "of Celery's imports/include settings, and in the triggers.py of every installed Django app "
    "(install(app) imports them the way Celery's autodiscover_tasks() imports tasks.py); "
    "see docs/index.md"
)


@dataclass(frozen=True)
class TriggerDefinition:
    """What ``@trigger`` recorded about one trigger function."""

    name: str
    workflow: str
    poll_interval: float
    allow_concurrent: bool
    function: Callable[..., Any]
    takes_state: bool

    @property
    def origin(self) -> str:
        """``module.qualname`` of the function, used in messages."""
        fn = self.function
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def spec(self) -> TriggerSpec:
        """What the store keeps of this trigger."""
        return TriggerSpec(name=self.name, workflow=self.workflow, poll_interval=self.poll_interval,
                           allow_concurrent=self.allow_concurrent)

    def evaluate(self, state: dict[str, Any] | None = None) -> TriggerResult:
        """Call the function once (with ``state`` if it takes it) and check what it returned.

        A ``TriggerResult`` or a bool is accepted; anything else raises
        ``TypeError`` naming the trigger (the trigger's error, recorded like
        an exception it raised).
        """
        raw = self.function(state if state is not None else {}) if self.takes_state else self.function()
        if isinstance(raw, TriggerResult):
            return raw
        if raw is True:
            return TriggerResult.fire()
        if raw is False:
            return TriggerResult.skip()
        raise TypeError(
            f"trigger {self.name!r} returned {type(raw).__name__}; it must return "
            "TriggerResult.fire(...), TriggerResult.skip(), True or False"
        )


class TriggerRegistry(Registry[TriggerDefinition]):
    """The triggers defined in this process, by name (thread-safe)."""

    def __init__(self) -> None:
        super().__init__()
        self._shortest: tuple[int, float | None] = (-1, None)

    def shortest_interval(self) -> float | None:
        """The shortest poll interval, or ``None`` without triggers.

        Beat asks for it on every tick (it sets the dispatcher's period), so
        it is worked out once per change of the registry, not per tick.
        """
        version, value = self._shortest
        if version != self.version:
            value = min((d.poll_interval for d in self.items()), default=None)
            self._shortest = (self.version, value)
        return value

    def add(self, definition: TriggerDefinition) -> None:
        with self._lock:
            existing = self._find(definition.name)
            if existing is not None and existing.origin != definition.origin:
                raise ConfigurationError(
                    f"trigger {definition.name!r} is already defined by {existing.origin}; "
                    f"{definition.origin} cannot use the same name. Pass a distinct "
                    "name=... to @trigger"
                )
            self._put(definition.name, definition)

    def get(self, name: str) -> TriggerDefinition:
        found = self._find(name)
        if found is None:
            raise UnknownTriggerError(f"unknown trigger {name!r}; known triggers: {self.describe_names()}")
        return found

    def describe_names(self) -> str:
        names = self.names()
        if not names:
            return f"none. {HOW_TRIGGERS_ARE_FOUND}"
        return ", ".join(repr(n) for n in names)


triggers = TriggerRegistry()
"""The process-wide trigger registry that ``@trigger`` writes to."""


def _takes_state(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if not required:
        return any(p.name == "state" for p in params)
    if len(required) == 1 and required[0].name == "state" and required[0].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    ):
        return True
    raise ConfigurationError(
        f"trigger {name!r}: the function must take no parameters, or one parameter "
        f"named 'state' (a persisted dict); it takes ({', '.join(p.name for p in required)})"
    )


def trigger(
    workflow: str,
    *,
    name: str | None = None,
    poll_interval: Duration = DEFAULT_POLL_INTERVAL,
    allow_concurrent: bool = False,
) -> Callable[[F], F]:
    """Register the decorated function as a trigger of ``workflow``.

    The function returns ``TriggerResult.skip()`` / ``TriggerResult.fire(ctx)``
    (or ``False`` / ``True``). It is polled about once per ``poll_interval``
    by the ``cloaca.poll`` Celery task once :func:`cloaca_celery.install` has
    bound the registry to an app. Invalid arguments raise ``ValueError`` here,
    at decoration time.
    """
    if callable(workflow) and not isinstance(workflow, str):
        raise ConfigurationError(
            "@trigger needs the workflow name: write @trigger(workflow='name', ...), "
            "not a bare @trigger"
        )

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise ConfigurationError(f"@trigger must decorate a function, not {fn!r}")
        trigger_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(trigger_name, str) or not trigger_name.strip():
            raise ConfigurationError(
                f"@trigger on {fn!r}: name must be a non-empty string, got {trigger_name!r}"
            )
        if trigger_name != trigger_name.strip():
            raise ConfigurationError(
                f"trigger {trigger_name!r}: a name must not start or end with whitespace"
            )
        if len(trigger_name) > 200:
            raise ConfigurationError(
                f"trigger {trigger_name[:40]!r}...: names are limited to 200 characters"
            )
        if not isinstance(workflow, str) or not workflow.strip():
            raise ConfigurationError(
                f"trigger {trigger_name!r}: workflow must be a non-empty workflow name, "
                f"got {workflow!r}"
            )
        for what, text in (("name", trigger_name), ("workflow name", workflow)):
            if any(unicodedata.category(ch) == "Cc" for ch in text):
                raise ConfigurationError(
                    f"trigger {trigger_name!r}: the {what} {text!r} contains a control character "
                    "(NUL, newline, tab...); PostgreSQL cannot store NUL and logs and the CLI show "
                    "names on one line: rename it"
                )
        if not isinstance(allow_concurrent, bool):
            raise ConfigurationError(
                f"trigger {trigger_name!r}: allow_concurrent must be True or False, "
                f"got {allow_concurrent!r}"
            )
        interval = parse_duration(poll_interval, f"trigger {trigger_name!r}: poll_interval")
        definition = TriggerDefinition(
            name=trigger_name,
            workflow=workflow,
            poll_interval=interval,
            allow_concurrent=allow_concurrent,
            function=fn,
            takes_state=_takes_state(fn, trigger_name),
        )
        triggers.add(definition)
        return fn

    return decorate
