"""Preview: evaluate a trigger once without firing it, and say what it returned.

The CLI's ``poll NAME`` evaluates here; ``poll NAME --worker`` and the Django
admin's "Preview" send the ``cloaca.preview`` task, so a worker (which has
the trigger's code, its network and its secrets) evaluates it. All three
give the same :class:`Preview`: a fire with its context, a skip with its
reason, or the error.

A preview writes nothing: no execution, no claim, no pending fire, no poll
time, no error count, and a trigger's ``state`` is read but never saved. It
reads the trigger's row and, for a fire, the active executions of the
trigger, to say what a real poll would do with the fire now (start the
workflow, or be held by the overlap policy behind an active execution of
the same work).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from .logs import error_text
from .store import ACTIVE_STATUSES, Store
from .triggers import TriggerDefinition, triggers

SKIP_REASON = "the trigger returned skip (TriggerResult.skip() or False): its condition is not met"

HOLD_WORDS = {
    "skip": "skipped as deduplicated",
    "buffer_one": "kept pending (the latest one) until it ends",
    "buffer_all": "kept pending, in order, until it ends",
    "cancel_other": "kept pending while that execution is revoked",
    "terminate_other": "kept pending while that execution is terminated",
}
"""What each overlap policy that holds a fire would do with it (``allow`` holds none)."""

ACTIVE_LOOKED_AT = 200
"""Active executions of the trigger read to find one holding a fired context's work key."""


@dataclass(frozen=True)
class Preview:
    """One evaluation of a trigger without firing (the JSON shape is in ``docs/cli.md``).

    ``result`` is ``fire``, ``skip`` or ``error``; ``reason`` says why a skip
    skipped, or what a real poll would do with a fire now; ``held_by`` is the
    active execution that would hold the fire back (its overlap policy);
    ``worker`` is the worker's name (``None``: evaluated in this process).
    """

    trigger_name: str
    result: str
    context: dict[str, Any] | None = None
    reason: str | None = None
    error: str | None = None
    took_ms: float = 0.0
    workflow: str | None = None
    enabled: bool | None = None
    dedup_hash: str | None = None
    held_by: str | None = None
    worker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preview:
        """A preview a worker returned (through the result backend's JSON)."""
        known: dict[str, Any] = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**known)


def preview_trigger(name: str, store: Store | None, *, worker: str | None = None) -> Preview:
    """Evaluate trigger ``name`` once, as a poll would, and fire nothing.

    ``store`` gives the trigger's ``state`` (a copy: what the function does
    to it is not saved), whether it is enabled, and the active executions
    that would hold a fire back; without one, the state is empty. An unknown
    trigger, an unreadable store, a function that raises or returns the
    wrong type, and a context or dedup key JSON cannot hold are the
    preview's ``error``.
    """
    try:
        definition = triggers.get(name)
    except KeyError as exc:
        where = f"worker {worker}" if worker else "this process"
        return Preview(name, "error", error=f"{exc.args[0]} (in {where})", worker=worker)
    schedule: dict[str, Any] | None = None
    if store is not None:
        try:
            schedule = store.get_schedule(name)
        except KeyError:
            schedule = None  # no row yet: defined in code, never synced; its state is empty
        except Exception as exc:  # noqa: BLE001 - a preview reports, it does not raise
            return Preview(name, "error", error=f"the store could not be read: {error_text(exc)}",
                           workflow=definition.workflow, worker=worker)
    base: dict[str, Any] = {
        "workflow": definition.workflow, "worker": worker,
        "enabled": None if schedule is None else bool(schedule["enabled"]),
    }
    state = json.loads(json.dumps(schedule["state"] if schedule else {}))
    started = time.monotonic()
    try:
        outcome = definition.evaluate(state if definition.takes_state else None)
        context = outcome.context.to_dict() if outcome.context is not None else None
        work = definition.dedup_hash(context or {}) if outcome.is_fire_result() else None
    except SoftTimeLimitExceeded:
        return Preview(name, "error", error="timed out (setting cloaca_poll_time_limit)",
                       took_ms=_ms(started), **base)
    except Exception as exc:  # noqa: BLE001 - the trigger's own error is the preview's answer
        return Preview(name, "error", error=error_text(exc), took_ms=_ms(started), **base)
    took = _ms(started)
    if work is None:
        return Preview(name, "skip", reason=SKIP_REASON + _disabled(base["enabled"]), took_ms=took, **base)
    holder = _holder(definition, store, work)
    reason = _fire_reason(definition, holder, base["enabled"])
    return Preview(name, "fire", context=context or {}, reason=reason, took_ms=took, dedup_hash=work,
                   held_by=holder, **base)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _holder(definition: TriggerDefinition, store: Store | None, work: str) -> str | None:
    """The active execution of the same work that a real poll's fire would wait behind, if any."""
    if store is None or definition.overlap == "allow":
        return None
    try:
        for status in ACTIVE_STATUSES:
            for execution in store.execution_history(definition.name, limit=ACTIVE_LOOKED_AT, status=status):
                if execution["dedup_hash"] == work:
                    return str(execution["execution_id"])
    except Exception:  # noqa: BLE001 - what a fire would do is a courtesy; the evaluation stands
        return None
    return None


def _disabled(enabled: bool | None) -> str:
    return " (the trigger is disabled: no scheduled poll runs it now)" if enabled is False else ""


def _fire_reason(definition: TriggerDefinition, holder: str | None, enabled: bool | None) -> str:
    off = _disabled(enabled)
    if holder is None:
        return f"a poll now would start workflow {definition.workflow!r}{off}"
    what = HOLD_WORDS.get(definition.overlap, "held")
    return (f"a poll now would not start it yet: active execution {holder} holds the same work, so "
            f"overlap={definition.overlap!r} would have it {what}{off}")
