"""The ``@trigger`` decorator and the registry of trigger definitions.

A trigger is a cheap function polled by Celery. Decorating it records a
:class:`TriggerDefinition` in this process's registry and returns the function
unchanged, so it stays callable (and testable) as plain Python.
"""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .context import Context, check_json_value, context_hash
from .durations import Duration, parse_duration
from .errors import ConfigurationError, ContextError, UnknownTriggerError
from .registries import Registry
from .results import TriggerResult
from .store import OVERLAP_POLICIES, TriggerSpec

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_POLL_INTERVAL = "5s"

HOW_TRIGGERS_ARE_FOUND = (
    "Triggers are found in the module that -A names and the modules it imports, in the modules "
    "of Celery's imports/include settings, and in the triggers.py of every installed Django app "
    "(install(app) imports them the way Celery's autodiscover_tasks() imports tasks.py); "
    "see docs/index.md"
)


BUFFERING = frozenset({"buffer_one", "buffer_all", "cancel_other", "terminate_other"})
"""The policies that keep a fire pending until the active execution has ended."""

DEFAULT_MAX_PENDING = 100

DedupKey = Sequence[str] | Callable[[Any], Any] | None


@dataclass(frozen=True)
class TriggerDefinition:
    """What ``@trigger`` recorded about one trigger function."""

    name: str
    workflow: str
    poll_interval: float
    overlap: str
    function: Callable[..., Any]
    takes_state: bool
    dedup_key: DedupKey = None
    max_pending: int = DEFAULT_MAX_PENDING
    batch: bool | None = None
    """``True``: its polls may share a message; ``False``: one message per poll; ``None``: by measure."""

    @property
    def allow_concurrent(self) -> bool:
        """``overlap == "allow"``: every fire runs, same work or not."""
        return self.overlap == "allow"

    def dedup_hash(self, context: Mapping[str, Any]) -> str:
        """The hash of the work a fired ``context`` is: the whole context, or its ``dedup_key``.

        Two fires are the same work for the overlap policy when these are
        equal. A key field missing from the context, or a key function that
        fails or returns what JSON cannot hold, is the fire's error.
        """
        if self.dedup_key is None:
            return context_hash(context)
        if callable(self.dedup_key):
            value = check_json_value(self.dedup_key(Context(context)), f"trigger {self.name!r}: dedup_key")
            return context_hash({"key": value})
        missing = [k for k in self.dedup_key if k not in context]
        if missing:
            raise ContextError(
                f"trigger {self.name!r}: dedup_key field(s) {', '.join(map(repr, missing))} missing from the "
                f"fired context {sorted(context)}: fire a context that has them, or change dedup_key"
            )
        return context_hash({k: context[k] for k in self.dedup_key})

    @property
    def origin(self) -> str:
        """``module.qualname`` of the function, used in messages."""
        fn = self.function
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def spec(self) -> TriggerSpec:
        """What the store keeps of this trigger."""
        return TriggerSpec(name=self.name, workflow=self.workflow, poll_interval=self.poll_interval,
                           allow_concurrent=self.allow_concurrent, overlap=self.overlap)

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
        self._loads: tuple[int, float | None, float] = (-1, None, 0.0)

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

    def longest_interval(self) -> float | None:
        """The longest poll interval, or ``None`` without triggers (worked out once per change)."""
        return self._load()[0]

    def polls_per_second(self) -> float:
        """How many polls a second all registered triggers are due, together (worked out once per change)."""
        return self._load()[1]

    def _load(self) -> tuple[float | None, float]:
        version, longest, rate = self._loads
        if version != self.version:
            intervals = [d.poll_interval for d in self.items()]
            longest, rate = max(intervals, default=None), sum(1.0 / i for i in intervals)
            self._loads = (self.version, longest, rate)
        return longest, rate

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
    allow_concurrent: bool | None = None,
    overlap: str | None = None,
    dedup_key: DedupKey = None,
    max_pending: int | None = None,
    batch: bool | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a trigger of ``workflow``.

    The function returns ``TriggerResult.skip()`` / ``TriggerResult.fire(ctx)``
    (or ``False`` / ``True``). It is polled about once per ``poll_interval``
    by the ``cloaca.poll`` Celery task once :func:`cloaca_celery.install` has
    bound the registry to an app. Invalid arguments raise ``ValueError`` here,
    at decoration time.

    ``overlap`` says what a fire does while an execution of the same work is
    active: ``"skip"`` (the default; ``allow_concurrent=False``), ``"allow"``
    (``allow_concurrent=True``), ``"buffer_one"``, ``"buffer_all"`` (at most
    ``max_pending`` waiting, default 100), ``"cancel_other"`` or
    ``"terminate_other"``; see ``docs/overlap.md``. ``dedup_key`` says what
    "the same work" is: context field names, or a function of the context
    returning a JSON value; by default the whole context.

    ``batch`` says whether the dispatcher may poll the trigger together with
    other cheap triggers in one ``cloaca.poll_batch`` message: ``None`` (the
    default) decides from the polls measured (slow, hanging or firing
    triggers get a message of their own), ``False`` always sends its polls
    alone, ``True`` batches them whatever is measured; see ``docs/design.md``.
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
        policy = _overlap_policy(trigger_name, allow_concurrent, overlap)
        interval = parse_duration(poll_interval, f"trigger {trigger_name!r}: poll_interval")
        definition = TriggerDefinition(
            name=trigger_name,
            workflow=workflow,
            poll_interval=interval,
            overlap=policy,
            function=fn,
            takes_state=_takes_state(fn, trigger_name),
            dedup_key=_dedup_key(trigger_name, dedup_key),
            max_pending=_max_pending(trigger_name, policy, max_pending),
            batch=_batch(trigger_name, batch),
        )
        triggers.add(definition)
        return fn

    return decorate


def _batch(name: str, batch: object) -> bool | None:
    if batch is not None and not isinstance(batch, bool):
        raise ConfigurationError(
            f"trigger {name!r}: batch must be True, False or None (decide from measured polls), "
            f"got {batch!r}"
        )
    return batch


def _overlap_policy(name: str, allow_concurrent: object, overlap: object) -> str:
    if allow_concurrent is not None and not isinstance(allow_concurrent, bool):
        raise ConfigurationError(
            f"trigger {name!r}: allow_concurrent must be True or False, got {allow_concurrent!r}"
        )
    if overlap is None:
        return "allow" if allow_concurrent else "skip"
    if allow_concurrent is not None:
        raise ConfigurationError(
            f"trigger {name!r}: give overlap={overlap!r} or allow_concurrent={allow_concurrent!r}, not both "
            "(allow_concurrent=True is overlap='allow', False is overlap='skip')"
        )
    if overlap not in OVERLAP_POLICIES:
        raise ConfigurationError(
            f"trigger {name!r}: overlap={overlap!r} is not a policy; use one of "
            f"{', '.join(repr(p) for p in OVERLAP_POLICIES)}"
        )
    return str(overlap)


def _dedup_key(name: str, key: object) -> DedupKey:
    if key is None or callable(key):
        return key  # type: ignore[return-value]
    if isinstance(key, str):
        return (key,)
    if isinstance(key, (list, tuple)) and key and all(isinstance(k, str) and k for k in key):
        return tuple(key)
    raise ConfigurationError(
        f"trigger {name!r}: dedup_key must be a list of context field names (e.g. ['order_id']) or a "
        f"function of the context returning a JSON value, got {key!r}"
    )


def _max_pending(name: str, policy: str, value: object) -> int:
    if value is None:
        return DEFAULT_MAX_PENDING
    if policy != "buffer_all":
        raise ConfigurationError(
            f"trigger {name!r}: max_pending only applies to overlap='buffer_all' "
            f"(this trigger's is {policy!r})"
        )
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"trigger {name!r}: max_pending must be a positive integer, got {value!r}")
    return value
