"""The ``Store`` protocol: where schedules (and, later, executions and claims) live.

The engine talks to the store only through this protocol so that the
SQLAlchemy store (:mod:`cloaca_celery.sqlstore`) and the Django ORM store of
``django_cloaca`` are interchangeable. Scheduling times that the database
compares and adds (``next_poll_at``, lease expiry) are epoch seconds
(floats); times shown to people are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TriggerSpec:
    """What the store needs to know about a registered trigger."""

    name: str
    workflow: str
    poll_interval: float
    allow_concurrent: bool


@dataclass(frozen=True)
class DuePoll:
    """A trigger whose poll slot the dispatcher has just claimed.

    ``due`` is the slot's time and ``next_due`` the next slot's (the row's new
    ``next_poll_at``), both epoch seconds. The poll sent for this slot owns the
    trigger until ``next_due`` without writing anything, unless it runs late
    or long (see :class:`cloaca_celery.polling.Poller`).
    """

    trigger_name: str
    poll_interval: float
    due: float = field(default=0.0, compare=False)
    next_due: float = field(default=0.0, compare=False)
    errors: int = field(default=0, compare=False)


@dataclass(frozen=True)
class PollLease:
    """Proof that this poll owns its trigger until ``until`` (epoch seconds).

    ``held`` leases are written on the schedule row (``poll_lease_until``,
    ``poll_token``) and must be released by :meth:`Store.finish_poll`. A
    scheduled poll normally starts with an unheld lease: it read the row and
    wrote nothing, because its slot already keeps every other scheduled poll
    away until the next one is due.
    """

    trigger_name: str
    token: str
    until: float
    state: dict[str, Any] = field(default_factory=dict)
    state_version: int = 0
    consecutive_errors: int = 0
    held: bool = True


@dataclass(frozen=True)
class PollRefusal:
    """Why a poll did not start: ``disabled``, ``running`` (overlap), ``too_soon`` or ``missing``."""

    trigger_name: str
    reason: str


@dataclass(frozen=True)
class PollOutcome:
    """What a finished poll writes back to its schedule row."""

    error: str | None = None
    fired_at: datetime | None = None
    state: dict[str, Any] | None = None
    deduplicated: bool = False


SPREAD_WINDOW = 60.0


def first_slot(name: str, interval: float, now: float, spread: bool) -> float:
    """When a new (or changed) trigger is first due.

    Spread: at a fixed offset within its first interval (at most a minute),
    taken from a hash of its name, so 1,000 triggers of ``1s`` are due a
    millisecond apart rather than all at once every second.
    """
    if not spread:
        return now
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    return now + min(float(interval), SPREAD_WINDOW) * fraction


def advance(next_poll_at: float, interval: float, now: float) -> float:
    """The next slot after claiming one: one interval on, or ``now + interval`` if far behind.

    The stores compute the same in SQL; this is for those that read the row first.
    """
    following = float(next_poll_at) + float(interval)
    return following if following > now else now + float(interval)


def due_poll(name: str, interval: float, next_due: float, errors: int) -> DuePoll:
    """A claimed slot, from the row's new ``next_poll_at`` and its ``consecutive_errors``."""
    interval, next_due = float(interval), float(next_due)
    return DuePoll(name, interval, due=next_due - interval, next_due=next_due, errors=int(errors))


def lease_refusal(
    name: str, enabled: bool, lease_until: float | None, token: str | None, now: float
) -> PollRefusal | None:
    """Why a poll may not start on a row in this state, or ``None`` if it may."""
    if not enabled:
        return PollRefusal(name, "disabled")
    if lease_until is not None and float(lease_until) >= now:
        return PollRefusal(name, "running" if token else "too_soon")
    return None


ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "revoked", "lost")
STATUSES = ACTIVE_STATUSES + FINAL_STATUSES


@dataclass(frozen=True)
class NewExecution:
    """The row a fire writes: one per fire, before the workflow is published."""

    execution_id: str
    trigger_name: str
    workflow: str
    context: dict[str, Any]
    context_hash: str
    task_ids: list[str]
    started_at: datetime


@runtime_checkable
class Store(Protocol):
    """Persistence of trigger schedules, shared by every beat and worker."""

    url: str
    """Where the store is, for people: a URL with its password hidden, or the Django database."""

    def ping(self) -> None:
        """Open a connection and prove the database answers."""
        ...

    def dispose(self) -> None:
        """Forget pooled connections without closing them (after a fork)."""
        ...

    def ensure_schema(self) -> None:
        """Create or upgrade the tables."""
        ...

    def sync_triggers(
        self, specs: Iterable[TriggerSpec], now: float, prune: bool = True, spread: bool = False
    ) -> None:
        """Create missing schedule rows and refresh changed ones.

        A new or changed row is due at ``now``; with ``spread`` (worker and
        beat start-up) at :func:`first_slot`, so that many triggers of one
        interval do not all fall due in the same instant forever after.

        An operator's ``enabled`` choice is kept. With ``prune``, rows of
        triggers absent from ``specs`` are marked unregistered and no longer
        dispatched (worker and beat start-up do this; the runner does not).
        """
        ...

    def claim_due(self, now: float, limit: int) -> list[DuePoll]:
        """Atomically take the poll slot of up to ``limit`` due, enabled triggers.

        Each claimed row's ``next_poll_at`` moves one interval on (or to
        ``now + interval`` when it fell behind), so concurrent dispatchers
        split the due triggers between them instead of doubling them.
        """
        ...

    def begin_poll(
        self, name: str, now: float, lease_seconds: float, token: str, *, hold: bool = True,
        slot_end: float | None = None,
    ) -> PollLease | PollRefusal:
        """Start a poll if the trigger is enabled and no other poll holds it.

        With ``hold`` the lease is written (until ``now + lease_seconds``,
        under ``token``) in one conditional UPDATE, and ``last_poll_at`` is
        stamped. Without it nothing is written: the row is read and the poll
        is refused if the trigger is disabled or another poll holds a live
        lease (``running``, or ``too_soon`` for a lease kept after a late poll).
        With ``slot_end`` (a late scheduled poll, whose slot ends then) the
        lease is taken only while the next slot is not claimed yet
        (``next_poll_at <= slot_end``); otherwise the poll is refused as ``late``.
        """
        ...

    def extend_poll_lease(self, name: str, token: str, until: float, now: float) -> bool:
        """Hold (or keep holding) the trigger under ``token`` until ``until``.

        Taken only if no other live lease holds it; ``False`` otherwise.
        """
        ...

    def finish_poll(
        self, lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None = None
    ) -> bool:
        """Record the outcome and release a held lease; ``False`` if the lease was lost.

        ``hold_until`` keeps the trigger from being polled again before that
        time (a scheduled poll that started late keeps half an interval from
        the next). An unheld lease's outcome is written only if the state it
        read is still current.
        """
        ...

    def list_schedules(self) -> list[dict[str, Any]]:
        ...

    def record_fire(self, execution: NewExecution, claim_until: float | None, now: float) -> bool:
        """Write the execution row (status ``queued``), claiming (trigger, hash) first.

        With ``claim_until`` (a non-concurrent trigger) the claim is taken
        atomically: if another live execution holds it, nothing is written
        and ``False`` is returned. A claim past its expiry, or whose execution
        has ended, is taken over. Claim and row are written in one transaction.
        """
        ...

    def mark_running(self, execution_id: str, at: datetime) -> bool:
        """``queued`` becomes ``running`` (the first step started)."""
        ...

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        """Set a final status if the execution is still active, and release its claim.

        Idempotent: ``False`` when it had already ended (or does not exist).
        """
        ...

    def active_executions(self, started_before: datetime, limit: int) -> list[dict[str, Any]]:
        """Queued or running executions that started before ``started_before``, oldest first."""
        ...

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        ...

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """A trigger's executions, newest first."""
        ...

    def prune_executions(self, completed_before: datetime, batch_size: int = 1000) -> int:
        """Delete ended executions completed before the given time, in batches; return the count."""
        ...

    def get_schedule(self, name: str) -> dict[str, Any]:
        """One schedule as a dict; ``KeyError`` naming the trigger if unknown."""
        ...

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a trigger on or off; ``KeyError`` if unknown."""
        ...

    def close(self) -> None:
        ...
