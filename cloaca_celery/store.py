"""The ``Store`` protocol, and the rules every store follows.

The engine talks to the store only through :class:`Store`, so that the
SQLAlchemy store (:mod:`cloaca_celery.sqlstore`) and the Django ORM store of
``django_cloaca`` are interchangeable. What the two stores decide is written
here once, as plain functions and values (which rows a sync adds, changes and
unregisters; whether a poll may start on the row it read; what a finished
poll writes; what a step's end writes; which pending fires a new one pushes
out; the argument checks, field lists and truncation limits); each store
keeps only its queries.

Scheduling times that the database compares and adds (``next_poll_at``,
poll leases, an execution's ``deadline_at``, its steps' times) are epoch
seconds (floats); the deadlines of executions are on the store's clock
(:meth:`Store.now`). Times shown to people are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, runtime_checkable

from .counters import COUNTS, Durations, HealthCounts, health_shard, merge
from .errors import ConfigurationError, UnknownTriggerError

OVERLAP_POLICIES = ("skip", "allow", "buffer_one", "buffer_all", "cancel_other", "terminate_other")
"""What a trigger does when it fires work whose key an active execution holds (``overlap=``)."""


@dataclass(frozen=True)
class TriggerSpec:
    """What the store needs to know about a registered trigger.

    ``allow_concurrent`` is what ``overlap == "allow"`` means, and each is
    filled from the other: ``allow_concurrent=True`` alone is ``overlap="allow"``.
    """

    name: str
    workflow: str
    poll_interval: float
    allow_concurrent: bool = False
    overlap: str = "skip"

    def __post_init__(self) -> None:
        overlap = "allow" if self.allow_concurrent and self.overlap == "skip" else self.overlap
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(
                f"trigger {self.name!r}: unknown overlap policy {overlap!r}; use one of "
                f"{', '.join(OVERLAP_POLICIES)}"
            )
        if self.allow_concurrent and overlap != "allow":
            raise ValueError(
                f"trigger {self.name!r}: allow_concurrent=True means overlap='allow', not {overlap!r}; "
                "give one of them"
            )
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "allow_concurrent", overlap == "allow")


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
    """The next slot after claiming one: the first slot on the trigger's own grid after ``now``.

    A row due at ``next_poll_at`` (at or before ``now``) moves on by whole
    intervals, ``next_poll_at + (floor((now - next_poll_at) / interval) + 1) *
    interval``: one interval when on time, more when it fell behind. It keeps
    its phase, so triggers that fell behind together (an outage) do not come
    due in the same instant from then on, and the slot claimed is the last
    one that began at or before ``now`` (no burst of the missed ones). The
    stores compute the same in SQL (:func:`behind_intervals` is the
    ``floor``); this is for those that read the row first.
    """
    start, step = float(next_poll_at), float(interval)
    return start + (behind_intervals(start, step, now) + 1) * step


def behind_intervals(next_poll_at: float, interval: float, now: float) -> int:
    """Whole intervals between a due row's ``next_poll_at`` and ``now`` (0 when on time)."""
    return max(0, math.floor((now - next_poll_at) / interval))


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
ENDING_STATUSES = ("failed", "revoked")
"""The final statuses a step may request while other steps of its execution still run."""

LIVE_STEP_STATES = ("running", "waiting")
"""A step row in one of these states can still run: its execution must not end yet."""
STEP_STATES = (*LIVE_STEP_STATES, "done")


@dataclass(frozen=True)
class NewExecution:
    """The row a fire writes: one per fire, before the workflow is published.

    ``dedup_hash`` is the hash of the work's key (the trigger's ``dedup_key``
    of the context); empty means the key is the whole context.
    """

    execution_id: str
    trigger_name: str
    workflow: str
    context: dict[str, Any]
    context_hash: str
    task_ids: list[str]
    started_at: datetime
    dedup_hash: str = ""

    @property
    def claim_hash(self) -> str:
        """The hash its claim is keyed by, and its row's ``dedup_hash``: the work's key."""
        return self.dedup_hash or self.context_hash


@dataclass(frozen=True)
class PendingFire:
    """A fire held back by the overlap policy (``buffer_one``, ``buffer_all``, ``cancel_other``,
    ``terminate_other``) while an active execution holds its key; started once that one ends.

    ``created_at`` is epoch seconds on the store's clock: pending fires of one
    key start oldest first (then by ``pending_id``).
    """

    pending_id: str
    trigger_name: str
    dedup_hash: str
    context: dict[str, Any]
    context_hash: str
    created_at: float


@dataclass(frozen=True)
class Held:
    """What :meth:`Store.hold_pending` did with a fire.

    ``pending``: recorded, behind the active execution ``holder`` (whose step
    ``holder_task_ids`` a cancelling policy revokes); ``dropped`` pending fires
    of the key were deleted to make room (the older ones past ``max_pending``,
    or with ``replace`` every other one; this fire itself, not recorded, if it
    is older than ``max_pending`` others). ``free``: no active execution holds
    the key any more and nothing was written; the caller records the fire
    with :meth:`Store.record_fire` instead (and holds it again if that is
    refused: another fire took the key meanwhile).
    """

    status: str
    holder: str | None = None
    holder_task_ids: tuple[str, ...] = ()
    dropped: int = 0


@runtime_checkable
class Store(Protocol):
    """Persistence of trigger schedules, shared by every beat and worker."""

    @property
    def url(self) -> str:
        """Where the store is, for people: a URL with its password hidden, or the Django database."""
        ...

    def ping(self) -> None:
        """Open a connection and prove the database answers (raises if it does not)."""
        ...

    def dispose(self) -> None:
        """Drop the connections inherited from a parent process (after a fork): this one opens its own."""
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

        Each claimed row's ``next_poll_at`` moves to the first slot of its own
        grid after ``now`` (:func:`advance`: one interval on, more when it fell
        behind, keeping its phase), so concurrent dispatchers split the due
        triggers between them instead of doubling them.
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

    def now(self) -> float:
        """The database's clock, in epoch seconds: the one clock every deadline is judged by.

        Workers, beats and sweeps on several hosts compare deadlines written by
        each other; taking ``now`` from the database means no two hosts' wall
        clocks are ever compared.
        """
        ...

    def record_fire(self, execution: NewExecution, *, claim: bool, now: float, deadline: float) -> bool:
        """Write the execution row (status ``queued``, ``deadline_at = deadline``), claiming first.

        With ``claim`` (a non-concurrent trigger) the claim of the work's key,
        (trigger, :attr:`NewExecution.claim_hash`), is taken atomically: if an
        active execution holds it, nothing is written and ``False`` is returned.
        Claims never expire by time: a claim whose execution is no longer active
        (ended, or missing) is taken over, from that holder only. Claim and row
        are written in one transaction.
        """
        ...

    def hold_pending(self, pending: PendingFire, *, replace: bool, max_pending: int) -> Held:
        """Record a fire behind the active execution that holds its key, in one transaction.

        The claim of (``trigger_name``, ``dedup_hash``) is locked first, so an
        end of its holder either comes before (the fire is ``free``: nothing is
        written) or waits until this commits (and then sees the pending fire in
        :meth:`next_pending`). With ``replace`` every other pending fire of the
        key is deleted (latest wins); without, the oldest ones past
        ``max_pending`` (at least 1) are (see :class:`Held`).
        """
        ...

    def next_pending(self, trigger_name: str, dedup_hash: str) -> PendingFire | None:
        """The oldest pending fire of a key (``created_at``, then ``pending_id``), or ``None``."""
        ...

    def start_pending(
        self, pending_id: str, execution: NewExecution, *, now: float, deadline: float
    ) -> bool:
        """Start a pending fire as ``execution``: in one transaction, take its claim as
        :meth:`record_fire` does, delete the pending row and write the execution row (``queued``,
        ``deadline_at = deadline``).

        ``False``, with nothing written, if the claim is held by an active
        execution or the pending row is gone (another process started it): of
        concurrent starts of one pending fire exactly one wins.
        """
        ...

    def orphan_pending(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` keys (``trigger_name``, ``dedup_hash``) with pending fires that no active
        execution holds (no claim, or a claim whose execution ended): the sweep starts them.
        Oldest first (by their oldest pending fire)."""
        ...

    def pending_fires(self, trigger_name: str) -> list[PendingFire]:
        """A trigger's pending fires, oldest first (``created_at``, then ``pending_id``)."""
        ...

    def start_step(self, execution_id: str, task_id: str, now: float, lease_until: float) -> bool:
        """A step starts: the fencing answer, and its lease (all times on the store's clock).

        If the execution is active and no end is pending (``ending_status``),
        it becomes ``running`` (``running_at`` set once), its deadline becomes
        ``lease_until`` (kept if later while other steps of it are live), and
        the step's row becomes ``running``; ``True``. Otherwise (ended,
        ending, missing) nothing is written and the step must not run: ``False``.
        On PostgreSQL this is one statement.
        """
        ...

    def end_step(
        self, execution_id: str, task_id: str, now: float, idle_until: float,
        retry_until: float | None = None,
    ) -> bool:
        """A step ended (``done``), or waits to retry until ``retry_until`` (``waiting``).

        A waiting step raises the deadline to ``retry_until``. When no step of
        the execution is left running or waiting, a pending end
        (:meth:`request_end`) ends it now (``True``); otherwise its deadline
        becomes ``idle_until`` (the next step waits in the broker). A missing
        step row is created. An execution that is not active is left alone.
        """
        ...

    def renew_leases(self, execution_ids: Collection[str], until: float) -> set[str]:
        """Heartbeat: ``deadline_at = max(deadline_at, until)`` of the active executions among the ids.

        One UPDATE for all of them; returns the given ids that are not active
        (ended or missing), whose steps should stop.
        """
        ...

    def request_end(
        self, execution_id: str, status: str, error: str | None, now: float, task_id: str | None = None
    ) -> bool:
        """A step reports ``failed`` or ``revoked`` (its own row, ``task_id``, becomes ``done`` first).

        If no other step of the execution is running or waiting it ends now,
        like :meth:`finish_execution` (``True``); otherwise the end waits for
        them (``ending_status``, ``error``: the first request wins) and no new
        step of it starts (``False``).
        """
        ...

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        """Set a final status if the execution is still active, and release its claim.

        Idempotent: ``False`` when it had already ended (or does not exist).
        """
        ...

    def sweep_candidates(
        self, now: float, limit: int, after: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """Active executions whose deadline passed (``deadline_at < now``), by (deadline, id).

        Paged by keyset: ``after`` is the (``deadline_at``, ``execution_id``)
        of the last one of the previous page. Each is the execution's dict with
        ``deadline_at``, ``ending_status`` and ``steps`` (their rows, oldest first).
        """
        ...

    def end_overdue(self, execution_id: str, status: str, error: str | None, now: float) -> bool:
        """End an execution the sweep found overdue, only if it is still active and overdue.

        A step that started or renewed its lease meanwhile wins: ``False``.
        """
        ...

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        ...

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """A trigger's executions, newest first."""
        ...

    def prune_executions(
        self, completed_before: datetime, batch_size: int = 1000, batches: int | None = None
    ) -> int:
        """Delete ended executions completed before the given time, and their steps; return the count.

        In batches of ``batch_size``, each one transaction; at most ``batches``
        of them (``None``: until none is left).
        """
        ...

    def get_schedule(self, name: str) -> dict[str, Any]:
        """One schedule as a dict; ``KeyError`` naming the trigger if unknown."""
        ...

    def set_enabled(
        self, name: str, enabled: bool, *, note: str | None = None, by: str | None = None
    ) -> None:
        """Switch a trigger on or off; ``KeyError`` if unknown.

        Disabling records the pause (:func:`switch_values`): when, on the
        store's clock, ``by`` whom and why (``note``); enabling clears it.
        """
        ...

    def save_health(self, process: str, rows: Collection[HealthCounts]) -> None:
        """Save a process's health counts, in one transaction: one stored row per minute and group of
        triggers (:func:`health_rows`), replacing that process's row of the same minute and group.
        ``rows`` are a process's totals for the minute, of every trigger of each group they touch,
        so saving them again changes nothing."""
        ...

    def health(self, trigger_name: str | None, since: datetime) -> list[HealthCounts]:
        """The health counts of one trigger (``None``: every trigger) for the minutes from the one
        holding ``since`` on, every process's rows of a minute summed (:func:`cloaca_celery.counters.merge`),
        by trigger then minute."""
        ...

    def last_polls(self, since: datetime | None = None) -> dict[str, datetime]:
        """When each trigger with health rows was last polled, by any process (as far as written);
        with ``since``, as counted in the minutes from the one holding it on (fewer rows to read)."""
        ...

    def prune_health(self, before: datetime) -> int:
        """Delete the health rows of minutes that started before ``before``; return how many."""
        ...

    def close(self) -> None:
        ...


# -- rules shared by the stores ------------------------------------------------------

LAST_ERROR_LIMIT = 4000
"""Characters of a poll's error kept in the schedule's ``last_error``."""

EXECUTION_ERROR_LIMIT = 8000
"""Characters of a failed execution's error kept in its ``error``."""

SCHEDULE_FIELDS = (
    "trigger_name", "workflow", "poll_interval", "allow_concurrent", "overlap", "enabled",
    "registered", "last_poll_at", "last_fire_at", "consecutive_errors", "last_error",
    "last_error_at", "state", "created_at", "updated_at", "dedup_count", "paused_at", "paused_by",
    "pause_note",
)
"""The columns of a schedule row given to callers as they are (``next_poll_at`` becomes a datetime)."""

EXECUTION_FIELDS = (
    "execution_id", "trigger_name", "workflow", "context", "context_hash", "dedup_hash", "status",
    "task_ids", "started_at", "running_at", "completed_at", "error",
)
"""The columns of an execution row, all given to callers (``dedup_hash`` is never ``None``)."""

SYNC_FIELDS = ("trigger_name", "workflow", "poll_interval", "allow_concurrent", "overlap", "registered")
"""What :func:`sync_plan` reads of each existing schedule row."""

POLL_ROW_FIELDS = (
    "enabled", "state", "state_version", "consecutive_errors", "poll_lease_until", "poll_token",
    "next_poll_at",
)
"""What :func:`poll_start` reads of the schedule row."""

DUE_FIELDS = ("trigger_name", "poll_interval", "next_poll_at", "consecutive_errors")
"""What a claim of due polls reads of each row it takes (see :func:`due_poll`)."""

SWEEP_FIELDS = (*EXECUTION_FIELDS, "deadline_at", "ending_status")
"""The columns of an execution row that :meth:`Store.sweep_candidates` reads."""

SWEEP_ORDER = ("deadline_at", "execution_id")
"""The order (and keyset) of :meth:`Store.sweep_candidates`."""

STEP_FIELDS = ("task_id", "state", "started_at", "updated_at", "waiting_until")
"""The columns of a step row given to callers (in a sweep candidate's ``steps``)."""

STEP_ORDER = ("execution_id", "started_at", "task_id")
"""The order the steps of sweep candidates are read in."""

ENDING_FIELDS = ("ending_status", "deadline_at")
"""What :func:`after_step_end` and :func:`after_end_request` read of the (locked) execution row."""

CLOCK_QUERIES = {
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
}
"""The query of :meth:`Store.now` on each database (the database's own clock, epoch seconds)."""


class Row(Protocol):
    """A row as a store reads it (SQLAlchemy's ``row._mapping``, a Django ``values()`` dict)."""

    def __getitem__(self, column: str, /) -> Any: ...


def utc(epoch: float) -> datetime:
    """Epoch seconds as a timezone-aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def aware_utc(value: datetime | None) -> datetime | None:
    """A datetime read from the database, in UTC and timezone-aware (naive ones are UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class SyncPlan:
    """What :meth:`Store.sync_triggers` writes, decided by :func:`sync_plan`.

    ``new``: whole rows to insert, each leaving alone a row of its name that
    another process inserted meanwhile. ``changed``: the values to set on each
    named row. ``gone``: the triggers to mark with ``gone_values`` (no longer
    registered, so no longer dispatched).
    """

    new: list[dict[str, Any]]
    changed: dict[str, dict[str, Any]]
    gone: list[str]
    gone_values: dict[str, Any]


def sync_plan(
    existing: Iterable[Row], specs: Iterable[TriggerSpec], now: float, prune: bool, spread: bool
) -> SyncPlan:
    """Compare the schedule rows (their :data:`SYNC_FIELDS`) with the registered triggers.

    A trigger without a row gets one, enabled; a row whose workflow, interval
    or overlap policy changed (or that was unregistered) is refreshed and due
    again at :func:`first_slot`. The operator's ``enabled`` is never touched.
    With ``prune``, registered rows of triggers absent from ``specs`` are gone.
    """
    wanted = {spec.name: spec for spec in specs}
    rows = {row["trigger_name"]: row for row in existing}
    now_dt = utc(now)
    new: list[dict[str, Any]] = []
    changed: dict[str, dict[str, Any]] = {}
    for name, spec in wanted.items():
        row = rows.get(name)
        code = {"workflow": spec.workflow, "poll_interval": spec.poll_interval,
                "allow_concurrent": spec.allow_concurrent, "overlap": spec.overlap, "registered": True}
        slot = {"next_poll_at": first_slot(name, spec.poll_interval, now, spread), "updated_at": now_dt}
        if row is None:
            new.append({"trigger_name": name, **code, **slot, "enabled": True, "consecutive_errors": 0,
                        "state": {}, "state_version": 0, "created_at": now_dt})
        elif any(row[key] != value for key, value in code.items()):
            changed[name] = {**code, **slot}
    gone = [name for name, row in rows.items() if prune and name not in wanted and row["registered"]]
    return SyncPlan(new, changed, gone, {"registered": False, "updated_at": now_dt})


def poll_hold(now: float, lease_seconds: float, token: str) -> dict[str, Any]:
    """The values a poll that holds its trigger writes on the row (see :meth:`Store.begin_poll`)."""
    return {"poll_lease_until": now + lease_seconds, "poll_token": token, "last_poll_at": utc(now)}


def poll_start(
    name: str, row: Row | None, now: float, lease_seconds: float, token: str, *,
    hold: bool, taken: bool, slot_end: float | None,
) -> PollLease | PollRefusal:
    """Whether a poll starts, from the row (its :data:`POLL_ROW_FIELDS`) read by :meth:`Store.begin_poll`.

    ``taken`` says whether the conditional write of :func:`poll_hold` changed
    the row (always ``False`` without ``hold``). A hold that was not taken is
    refused with the reason the row shows: ``late`` when its next slot is
    past ``slot_end`` (the dispatcher has claimed it), else why
    :func:`lease_refusal` refuses it (``running`` when it no longer says).
    """
    if row is None:
        return PollRefusal(name, "missing")
    refusal = lease_refusal(name, row["enabled"], row["poll_lease_until"], row["poll_token"], now)
    if hold and not taken:
        if refusal is None and slot_end is not None and float(row["next_poll_at"]) > slot_end:
            return PollRefusal(name, "late")
        return refusal or PollRefusal(name, "running")
    if not hold and refusal is not None:
        return refusal
    return PollLease(
        trigger_name=name, token=token, until=now + lease_seconds,
        state=dict(row["state"] or {}), state_version=int(row["state_version"]),
        consecutive_errors=int(row["consecutive_errors"]), held=hold,
    )


class Increment:
    """A value of :class:`PollChange`: the column's own value plus one, computed by the database."""

    def __repr__(self) -> str:
        return "INCREMENT"


INCREMENT = Increment()


@dataclass(frozen=True)
class PollChange:
    """The one ``UPDATE`` of a finished poll: set ``values`` on the row that matches ``conditions``.

    ``conditions`` are column equalities; a value that is :data:`INCREMENT`
    is the column plus one.
    """

    conditions: dict[str, Any]
    values: dict[str, Any]


def finish_poll_change(
    lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None
) -> PollChange | None:
    """What :meth:`Store.finish_poll` writes, or ``None`` when there is nothing to write.

    A held lease is released (kept until ``hold_until`` if that is still to
    come) and only by its token. A new ``state`` is saved only over the
    version the poll read (compare-and-set).
    """
    values: dict[str, Any] = {}
    if lease.held:
        kept = hold_until is not None and hold_until > now
        values.update(poll_lease_until=hold_until if kept else None, poll_token=None)
    if outcome.error is not None:
        values.update(
            consecutive_errors=INCREMENT, last_error=outcome.error[:LAST_ERROR_LIMIT], last_error_at=utc(now)
        )
    elif lease.consecutive_errors:
        values["consecutive_errors"] = 0
    if outcome.fired_at is not None:
        values["last_fire_at"] = outcome.fired_at
    if outcome.state is not None:
        values.update(state=outcome.state, state_version=INCREMENT)
    if outcome.deduplicated:
        values["dedup_count"] = INCREMENT
    if not values:
        return None
    conditions: dict[str, Any] = {"trigger_name": lease.trigger_name}
    if lease.held:
        conditions["poll_token"] = lease.token
    if outcome.state is not None:
        conditions["state_version"] = lease.state_version
    return PollChange(conditions, values)


def finish_poll(
    lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None,
    write: Callable[[PollChange], int],
) -> bool:
    """:meth:`Store.finish_poll`: ``write`` is the store's UPDATE of a change, returning the rows it matched.

    Nothing to write is a success; otherwise the poll's outcome counts only if
    its row still matched (the lease was not lost, the state not overwritten).
    """
    change = finish_poll_change(lease, outcome, now, hold_until)
    return True if change is None else bool(write(change))


def schedule_dict(row: Row) -> dict[str, Any]:
    """A schedule row (:data:`SCHEDULE_FIELDS` and ``next_poll_at``) as callers get it."""
    data = {name: row[name] for name in SCHEDULE_FIELDS}
    for key in ("last_poll_at", "last_fire_at", "last_error_at", "created_at", "updated_at", "paused_at"):
        data[key] = aware_utc(data[key])
    for key in ("enabled", "allow_concurrent", "registered"):
        data[key] = bool(data[key])
    data["poll_interval"] = float(data["poll_interval"])
    data["state"] = dict(data["state"] or {})
    next_poll = row["next_poll_at"]
    data["next_poll_at"] = utc(float(next_poll)) if next_poll is not None else None
    return data


def execution_dict(row: Row) -> dict[str, Any]:
    """An execution row (:data:`EXECUTION_FIELDS`) as callers get it."""
    data = {name: row[name] for name in EXECUTION_FIELDS}
    for key in ("started_at", "running_at", "completed_at"):
        data[key] = aware_utc(data[key])
    data["context"] = dict(data["context"] or {})
    data["task_ids"] = list(data["task_ids"] or [])
    data["dedup_hash"] = data["dedup_hash"] or data["context_hash"]  # NULL: written before dedup keys
    return data


def execution_row(execution: NewExecution, deadline: float) -> dict[str, Any]:
    """The row :meth:`Store.record_fire` inserts: the fire, ``queued``, looked at by ``deadline``."""
    return {
        "execution_id": execution.execution_id, "trigger_name": execution.trigger_name,
        "workflow": execution.workflow, "context": execution.context,
        "context_hash": execution.context_hash, "dedup_hash": execution.claim_hash, "status": "queued",
        "task_ids": list(execution.task_ids), "started_at": execution.started_at,
        "deadline_at": deadline,
    }


def claim_key(trigger_name: str, dedup_hash: str) -> str:
    """The primary key of a claim: ``"<trigger>\\x1f<hash>"``, the hash being the work's key
    (:attr:`NewExecution.claim_hash`; kept in the claim's ``context_hash`` column).

    One column, because Django (before 5.2) has no composite primary key; the
    pair stays unique on its own as well. The hash has a fixed length, so two
    pairs never make one key.
    """
    return f"{trigger_name}\x1f{dedup_hash}"


def claims_by_context(
    keyed_by_work: Iterable[tuple[str, str, str]], taken: Iterable[str]
) -> list[tuple[str, dict[str, str] | None]]:
    """A downgrade below dedup keys: each claim keyed by a work key is keyed by its execution's
    context hash again (``(claim_key, values to set)``), or deleted (``None``) when that context
    is claimed already (its trigger's key changed in between): the context stays claimed either way.

    ``keyed_by_work``: (``claim_key``, ``trigger_name``, execution's ``context_hash``) of the
    claims whose hash is not their execution's context hash; ``taken``: every claim key.
    """
    keys = set(taken)
    changes: list[tuple[str, dict[str, str] | None]] = []
    for key, trigger_name, context_hash in keyed_by_work:
        by_context = claim_key(trigger_name, context_hash)
        values = {"claim_key": by_context, "context_hash": context_hash}
        changes.append((key, None if by_context in keys else values))
        keys.add(by_context)
    return changes


def claim_holder(execution: NewExecution, now: float) -> dict[str, Any]:
    """The values that make ``execution`` the holder of its claim (until the execution ends)."""
    return {"execution_id": execution.execution_id, "claimed_at": now}


def claim_row(execution: NewExecution, now: float) -> dict[str, Any]:
    """A new claim row: the (trigger, :attr:`~NewExecution.claim_hash`) of ``execution``, held by it.

    The column keeps its name ``context_hash``; it holds the hash of the work's
    key, which is the context hash when the trigger has no ``dedup_key``.
    """
    return {
        "claim_key": claim_key(execution.trigger_name, execution.claim_hash),
        "trigger_name": execution.trigger_name, "context_hash": execution.claim_hash,
        **claim_holder(execution, now),
    }


def execution_end(status: str, error: str | None, at: datetime) -> dict[str, Any]:
    """The values that end an execution now (``status`` must be final): no deadline, no pending end.

    Every way of ending one writes these with a condition that the row is
    still active, and deletes its claim in the same transaction.
    """
    check_final_status(status)
    return {"status": status, "completed_at": at, "error": _execution_error(error),
            "deadline_at": None, "ending_status": None}


def _execution_error(error: str | None) -> str | None:
    return None if error is None else error[:EXECUTION_ERROR_LIMIT]


def later(deadline: float | None, until: float) -> float:
    """The later of a deadline (``None``: none yet) and ``until``."""
    return until if deadline is None else max(float(deadline), until)


# -- steps, leases and the deadline rule ------------------------------------------------


STEP_CHANGE_FIELDS = ("state", "updated_at", "waiting_until")
"""The columns of a step row that :func:`step_change` sets (``started_at`` is kept)."""


def step_change(now: float, state: str = "running", waiting_until: float | None = None) -> dict[str, Any]:
    """What a step's start (``running``) or end (``done``, ``waiting``) sets on its row
    (:data:`STEP_CHANGE_FIELDS`).

    A row that exists keeps its ``started_at``; a new one gets :func:`step_row`.
    """
    return {"state": state, "updated_at": now, "waiting_until": waiting_until}


def step_end_change(now: float, retry_until: float | None) -> dict[str, Any]:
    """The row of a step that ended: ``done``, or ``waiting`` until ``retry_until``."""
    if retry_until is None:
        return step_change(now, "done")
    return step_change(now, "waiting", retry_until)


def step_row(execution_id: str, task_id: str, now: float, change: dict[str, Any]) -> dict[str, Any]:
    """A new step row carrying ``change`` (from :func:`step_change`), started at ``now``."""
    return {"task_id": task_id, "execution_id": execution_id, "started_at": now, **change}


@dataclass(frozen=True)
class ExecutionChange:
    """What a step's end writes on its execution row, decided on the row read under its lock.

    ``values`` to set (none: nothing to write); with ``ends`` they end the
    execution, and its claim is deleted in the same transaction.
    """

    values: dict[str, Any]
    ends: bool = False


def _pending_end(now: float) -> dict[str, Any]:
    """End with the requested ``ending_status`` (the caller sets ``status`` to it) and its error."""
    return {"completed_at": utc(now), "deadline_at": None, "ending_status": None}


def after_step_end(
    row: Row, others_live: bool, now: float, idle_until: float, retry_until: float | None
) -> ExecutionChange:
    """:meth:`Store.end_step` on an active execution (its :data:`ENDING_FIELDS`).

    ``others_live``: another step row of it is ``running`` or ``waiting``.
    A step waiting to retry keeps it alive until ``retry_until`` at least;
    the last live step's end either ends it with a pending end or leaves it
    idle until ``idle_until``.
    """
    if retry_until is not None:
        return ExecutionChange({"deadline_at": later(row["deadline_at"], retry_until)})
    if others_live:
        return ExecutionChange({})
    if row["ending_status"] is not None:
        return ExecutionChange({**_pending_end(now), "status": row["ending_status"]}, ends=True)
    return ExecutionChange({"deadline_at": idle_until})


def after_end_request(
    row: Row, others_live: bool, status: str, error: str | None, now: float
) -> ExecutionChange:
    """:meth:`Store.request_end` on an active execution (its :data:`ENDING_FIELDS`).

    With other live steps the end waits (the first request's status and error
    are kept); without, it ends now, with the pending end if there was one.
    """
    check_ending_status(status)
    pending = row["ending_status"]
    if others_live:
        return ExecutionChange({} if pending else {"ending_status": status, "error": _execution_error(error)})
    if pending is not None:
        return ExecutionChange({**_pending_end(now), "status": pending}, ends=True)
    return ExecutionChange(execution_end(status, error, utc(now)), ends=True)


class StepEndQueries(Protocol):
    """A store's queries for :func:`end_step` and :func:`request_end`, all in one transaction."""

    def locked_execution(self, execution_id: str) -> Row | None:
        """The :data:`ENDING_FIELDS` of the execution if it is active (``None`` if not), its row
        locked until the transaction ends: every writer of an execution's steps locks it first."""
        ...

    def write_step(self, row: dict[str, Any], change: dict[str, Any]) -> None:
        """Insert the step ``row`` (:func:`step_row`), or set ``change`` on its task's existing row."""
        ...

    def others_live(self, execution_id: str, task_id: str | None) -> bool:
        """Whether a step row of the execution other than ``task_id``'s is running or waiting
        (read after the lock: the latest rows)."""
        ...

    def write_execution(self, execution_id: str, change: ExecutionChange) -> None:
        """Set ``change.values`` on the execution row; with ``change.ends`` delete its claim too."""
        ...


def end_step(
    queries: StepEndQueries, execution_id: str, task_id: str, now: float, idle_until: float,
    retry_until: float | None,
) -> bool:
    """:meth:`Store.end_step`, on a store's queries in one transaction."""
    return _after_step(
        queries, execution_id, task_id, now, step_end_change(now, retry_until),
        lambda execution, others_live: after_step_end(execution, others_live, now, idle_until, retry_until),
    )


def request_end(
    queries: StepEndQueries, execution_id: str, status: str, error: str | None, now: float,
    task_id: str | None,
) -> bool:
    """:meth:`Store.request_end`, on a store's queries in one transaction."""
    check_ending_status(status)
    return _after_step(
        queries, execution_id, task_id, now, step_end_change(now, None),
        lambda execution, others_live: after_end_request(execution, others_live, status, error, now),
    )


def _after_step(
    queries: StepEndQueries, execution_id: str, task_id: str | None, now: float, change: dict[str, Any],
    decide: Callable[[Row, bool], ExecutionChange],
) -> bool:
    """Lock the execution (nothing happens if it is not active), write the step's row (if a step is
    named), and write on the execution what ``decide`` says from the row and the other live steps."""
    execution = queries.locked_execution(execution_id)
    if execution is None:
        return False
    if task_id is not None:
        queries.write_step(step_row(execution_id, task_id, now, change), change)
    ending = decide(execution, queries.others_live(execution_id, task_id))
    queries.write_execution(execution_id, ending)
    return ending.ends


def sweep_candidates(rows: Iterable[Row], steps: Iterable[Row]) -> list[dict[str, Any]]:
    """The dicts of :meth:`Store.sweep_candidates`: execution rows (:data:`SWEEP_FIELDS`) in
    their order, each with its ``steps`` (rows of :data:`STEP_FIELDS` and ``execution_id``)."""
    by_execution: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        by_execution.setdefault(step["execution_id"], []).append({
            "task_id": step["task_id"], "state": step["state"], "started_at": float(step["started_at"]),
            "updated_at": float(step["updated_at"]),
            "waiting_until": None if step["waiting_until"] is None else float(step["waiting_until"]),
        })
    return [
        {**execution_dict(row), "deadline_at": float(row["deadline_at"]),
         "ending_status": row["ending_status"], "steps": by_execution.get(row["execution_id"], [])}
        for row in rows
    ]


# -- pending fires (overlap policies) ------------------------------------------------------

PENDING_FIELDS = ("pending_id", "trigger_name", "dedup_hash", "context", "context_hash", "created_at")
"""The columns of a pending fire's row (``cloaca_pending``), those of :class:`PendingFire`."""

PENDING_ORDER = ("created_at", "pending_id")
"""The order pending fires of a key start in (and are listed, and dropped, in): oldest first."""


def pending_row(pending: PendingFire) -> dict[str, Any]:
    """The row :meth:`Store.hold_pending` inserts."""
    return {name: getattr(pending, name) for name in PENDING_FIELDS}


def pending_fire(row: Row) -> PendingFire:
    """A pending fire's row (:data:`PENDING_FIELDS`) as callers get it."""
    return PendingFire(
        pending_id=row["pending_id"], trigger_name=row["trigger_name"], dedup_hash=row["dedup_hash"],
        context=dict(row["context"] or {}), context_hash=row["context_hash"],
        created_at=float(row["created_at"]),
    )


def pending_to_drop(waiting: Iterable[Row], new: PendingFire, replace: bool, max_pending: int) -> list[str]:
    """The ids of the pending fires of a key that a new one pushes out (the new one's among them
    if it is itself the oldest past ``max_pending``).

    ``waiting``: the key's other pending fires (``pending_id``, ``created_at``).
    With ``replace`` all of them go (latest wins); without, the oldest ones
    until ``max_pending`` are left, the new one counted.
    """
    ids = sorted(
        [(float(row["created_at"]), row["pending_id"]) for row in waiting]
        + [(new.created_at, new.pending_id)]
    )
    if replace:
        return [pending_id for _, pending_id in ids if pending_id != new.pending_id]
    return [pending_id for _, pending_id in ids[:max(0, len(ids) - max_pending)]]


class HoldQueries(Protocol):
    """A store's queries for :func:`hold_pending`, all in one transaction."""

    def locked_holder(self, trigger_name: str, dedup_hash: str) -> str | None:
        """The ``execution_id`` of the key's claim, its row locked until the transaction ends
        (``None``: no claim). Every end of an execution deletes its claim, so it waits for this."""
        ...

    def active_task_ids(self, execution_id: str) -> list[str] | None:
        """The ``task_ids`` of the execution if it is active (``None`` if not)."""
        ...

    def waiting_fires(self, trigger_name: str, dedup_hash: str) -> list[Row]:
        """The ``pending_id`` and ``created_at`` of the key's pending fires."""
        ...

    def drop_pending(self, pending_ids: list[str]) -> int:
        """Delete these pending fires; how many there were."""
        ...

    def insert_pending(self, row: dict[str, Any]) -> None:
        """Insert a pending fire's row (:func:`pending_row`)."""
        ...


def hold_pending(queries: HoldQueries, pending: PendingFire, replace: bool, max_pending: int) -> Held:
    """:meth:`Store.hold_pending`, on a store's queries in one transaction.

    Pending fires of a key change only under its claim's lock (this, and
    :func:`start_pending` which claims first), so what is read here stays true
    until the commit.
    """
    check_max_pending(max_pending)
    holder = queries.locked_holder(pending.trigger_name, pending.dedup_hash)
    task_ids = None if holder is None else queries.active_task_ids(holder)
    if task_ids is None:
        return Held("free")
    drop = pending_to_drop(
        queries.waiting_fires(pending.trigger_name, pending.dedup_hash), pending, replace, max_pending
    )
    others = [pending_id for pending_id in drop if pending_id != pending.pending_id]
    dropped = queries.drop_pending(others) if others else 0
    if pending.pending_id in drop:
        dropped += 1
    else:
        queries.insert_pending(pending_row(pending))
    return Held("pending", holder, tuple(task_ids), dropped)


class StartQueries(Protocol):
    """A store's queries for :func:`start_pending`, all in one transaction."""

    def take_claim(self, execution: NewExecution, now: float) -> bool:
        """Take the claim as :meth:`Store.record_fire` does; ``False`` if an active execution holds it."""
        ...

    def drop_pending(self, pending_ids: list[str]) -> int:
        """Delete these pending fires; how many there were."""
        ...

    def insert_execution(self, row: dict[str, Any]) -> None:
        """Insert an execution's row (:func:`execution_row`)."""
        ...


def start_pending(
    queries: StartQueries, pending_id: str, execution: NewExecution, now: float, deadline: float
) -> bool:
    """:meth:`Store.start_pending`, on a store's queries in one transaction; the store rolls the
    transaction back when this is ``False`` (the claim may have been taken).

    The claim comes first, then the pending row: every writer of a key's
    pending fires takes them in that order, so none waits for another in a circle.
    """
    if not queries.take_claim(execution, now) or not queries.drop_pending([pending_id]):
        return False
    queries.insert_execution(execution_row(execution, deadline))
    return True


# -- health counts -----------------------------------------------------------------------

HEALTH_FIELDS = ("group_key", "minute", "process", "shard", "counts", "last_poll_at")
"""The columns of a health row (``cloaca_health_minutes``): one process's counts of one minute for
the triggers of one group (:func:`cloaca_celery.counters.health_shard`)."""


def health_group_key(minute: datetime, process: str, shard: int) -> str:
    """The primary key of a health row: ``"<minute epoch>\x1f<process>\x1f<group>"``.

    One column, as for claims (Django before 5.2 has no composite key). The
    minute and the group have a fixed length and a process name no
    separator, so two rows never make one key.
    """
    return f"{int(minute.timestamp()):011d}\x1f{process[:100]}\x1f{shard:02d}"


def _trimmed(buckets: list[int]) -> list[int]:
    end = len(buckets)
    while end and not buckets[end - 1]:
        end -= 1
    return buckets[:end]


def health_entry(counts: HealthCounts) -> dict[str, Any]:
    """One trigger's counts in a health row's ``counts`` (JSON): ``c`` the counts of
    :data:`~cloaca_celery.counters.COUNTS` in order, ``p``/``l`` the poll duration and latency
    histograms (trailing empty buckets left out) with their sums (``ps``/``ls``) and maxima
    (``pm``/``lm``), ``at`` the last poll (epoch seconds, or ``None``)."""
    polls, latency = counts.poll_seconds, counts.latency_seconds
    return {
        "c": [getattr(counts, name) for name in COUNTS],
        "p": _trimmed(polls.buckets), "ps": polls.total, "pm": polls.largest,
        "l": _trimmed(latency.buckets), "ls": latency.total, "lm": latency.largest,
        "at": counts.last_poll_at.timestamp() if counts.last_poll_at is not None else None,
    }


def _buckets(value: Any, size: int) -> list[int]:
    values = [int(v) for v in (value or [])][:size]
    return values + [0] * (size - len(values))


def health_counts(trigger_name: str, minute: datetime, entry: dict[str, Any]) -> HealthCounts:
    """A trigger's :func:`health_entry` of a row's minute as :class:`HealthCounts`."""
    size = len(Durations().buckets)
    numbers = [int(v) for v in entry.get("c") or []] + [0] * len(COUNTS)
    at = entry.get("at")
    return HealthCounts(
        trigger_name, minute, **dict(zip(COUNTS, numbers, strict=False)),
        poll_seconds=Durations(_buckets(entry.get("p"), size), float(entry.get("ps") or 0),
                               float(entry.get("pm") or 0)),
        latency_seconds=Durations(_buckets(entry.get("l"), size), float(entry.get("ls") or 0),
                                  float(entry.get("lm") or 0)),
        last_poll_at=datetime.fromtimestamp(float(at), tz=timezone.utc) if at is not None else None,
    )


def health_rows(process: str, rows: Iterable[HealthCounts]) -> list[dict[str, Any]]:
    """The rows that store ``rows`` (a process's totals of each trigger and minute): one per minute
    and group, in key order. Each replaces the process's row of its minute and group whole, so
    ``rows`` must hold every trigger of a group the process counted in that minute (as
    :meth:`cloaca_celery.counters.HealthCounter.flush` gives them)."""
    groups: dict[tuple[datetime, int], dict[str, Any]] = {}
    for counts in rows:
        shard = health_shard(counts.trigger_name)
        row = groups.get((counts.minute, shard))
        if row is None:
            row = groups[(counts.minute, shard)] = {
                "group_key": health_group_key(counts.minute, process, shard), "minute": counts.minute,
                "process": process[:100], "shard": shard, "counts": {}, "last_poll_at": None,
            }
        row["counts"][counts.trigger_name] = health_entry(counts)
        if counts.last_poll_at is not None:
            row["last_poll_at"] = max(row["last_poll_at"] or counts.last_poll_at, counts.last_poll_at)
    return [groups[key] for key in sorted(groups)]


def _counts_of(row: Row) -> dict[str, Any]:
    counts = row["counts"]
    if isinstance(counts, (str, bytes)):  # a JSON column read as text (MySQL through some drivers)
        counts = json.loads(counts)
    return dict(counts or {})


def merged_health(rows: Iterable[Row], trigger_name: str | None = None) -> list[HealthCounts]:
    """:meth:`Store.health` from the rows read (only ``trigger_name``'s counts, if given)."""
    found = []
    for row in rows:
        minute = aware_utc(row["minute"])
        assert minute is not None
        for name, entry in _counts_of(row).items():
            if trigger_name is None or name == trigger_name:
                found.append(health_counts(name, minute, entry))
    return merge(found)


def last_polls_of(rows: Iterable[Row]) -> dict[str, datetime]:
    """:meth:`Store.last_polls` from the rows read: each trigger's latest ``at``."""
    latest: dict[str, float] = {}
    for row in rows:
        for name, entry in _counts_of(row).items():
            at = entry.get("at")
            if at is not None and at > latest.get(name, -math.inf):
                latest[name] = float(at)
    return {name: datetime.fromtimestamp(at, tz=timezone.utc) for name, at in sorted(latest.items())}


def health_rows_from_per_trigger(rows: Iterable[Row]) -> Iterable[dict[str, Any]]:
    """The health rows of counts stored a row per (trigger, minute, process), as before Alembic
    revision 0008 and Django migration 0006 (``cloaca_health``); ``rows`` ordered by minute, then
    process."""
    size = len(Durations().buckets)
    block: list[HealthCounts] = []
    at: tuple[Any, Any] | None = None
    for row in rows:
        if (row["minute"], row["process"]) != at:
            if block and at is not None:
                yield from health_rows(at[1], block)
            block, at = [], (row["minute"], row["process"])
        minute = aware_utc(row["minute"])
        assert minute is not None
        block.append(HealthCounts(
            row["trigger_name"], minute, **{name: int(row[name] or 0) for name in COUNTS},
            poll_seconds=Durations(_buckets(row["poll_buckets"], size), float(row["poll_seconds_sum"] or 0),
                                   float(row["poll_seconds_max"] or 0)),
            latency_seconds=Durations(_buckets(row["latency_buckets"], size),
                                      float(row["latency_seconds_sum"] or 0),
                                      float(row["latency_seconds_max"] or 0)),
            last_poll_at=aware_utc(row["last_poll_at"]),
        ))
    if block and at is not None:
        yield from health_rows(at[1], block)


def health_since(since: datetime) -> datetime:
    """The first minute :meth:`Store.health` returns for ``since`` (the minute that holds it)."""
    if since.tzinfo is None:
        raise ValueError("health(): since must be a timezone-aware datetime")
    return since - timedelta(seconds=since.second, microseconds=since.microsecond)


def clock_query(vendor: str) -> str:
    """The SQL of :meth:`Store.now` on a database (``postgresql``, ``mysql``/``mariadb``, ``sqlite``)."""
    query = CLOCK_QUERIES.get("mysql" if vendor == "mariadb" else vendor)
    if query is None:
        raise ConfigurationError(
            f"cloaca cannot read the clock of a {vendor!r} database: use PostgreSQL, MySQL/MariaDB or SQLite"
        )
    return query


# -- argument checks and errors -----------------------------------------------------


def check_final_status(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise ValueError(
            f"finish_execution: {status!r} is not a final status ({', '.join(FINAL_STATUSES)})"
        )


def check_ending_status(status: str) -> None:
    if status not in ENDING_STATUSES:
        raise ValueError(
            f"request_end: {status!r} is not a status a step may request ({', '.join(ENDING_STATUSES)})"
        )


def check_max_pending(max_pending: object) -> None:
    if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
        raise ValueError(
            f"hold_pending: max_pending must be a whole number of at least 1, got {max_pending!r}"
        )


def check_history_query(status: str | None, limit: int | None, offset: int | None) -> None:
    """The arguments of :meth:`Store.execution_history`: a known status, a page of whole numbers."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    for name, value in (("limit", limit), ("offset", offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


def check_enabled(name: str, enabled: object) -> None:
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled({name!r}, ...): enabled must be True or False")


# -- pausing: who switched a trigger off, when and why ---------------------------------

PAUSE_NOTE_LIMIT = 1000
"""Characters of a pause's note kept (a longer one is refused, not cut: it is someone's words)."""

PAUSED_BY_LIMIT = 200
"""Characters of who paused a trigger (a user name, an OS user, ``--by``)."""

PAUSE_FIELDS = ("paused_at", "paused_by", "pause_note")
"""The columns that describe a disabled trigger's pause; ``NULL`` while it is enabled."""


def switch_values(
    name: str, enabled: bool, now: float, note: str | None = None, by: str | None = None
) -> dict[str, Any]:
    """What :meth:`Store.set_enabled` sets on the schedule row (``now``: the store's clock).

    Disabling records the pause: ``paused_at`` (now), ``paused_by`` and
    ``pause_note`` (blank ones are ``None``); disabling a disabled trigger
    again replaces them. Enabling clears all three: the row describes the
    current pause only (the Django admin's change history keeps every one).
    A note or who on enabling is refused: there is nothing to record them on.
    """
    check_enabled(name, enabled)
    values: dict[str, Any] = {"enabled": enabled, "updated_at": utc(now)}
    if enabled:
        if note is not None or by is not None:
            raise ValueError(
                f"set_enabled({name!r}, True): a note and who are recorded when a trigger is disabled; "
                "enabling clears them, so give neither"
            )
        return {**values, "paused_at": None, "paused_by": None, "pause_note": None}
    return {**values, "paused_at": utc(now), "paused_by": _pause_text(name, "by", by, PAUSED_BY_LIMIT),
            "pause_note": _pause_text(name, "note", note, PAUSE_NOTE_LIMIT)}


def _pause_text(name: str, what: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"set_enabled({name!r}, False): {what} must be a string, got {type(value).__name__}")
    text = value.strip()
    if "\x00" in text:
        raise ValueError(f"set_enabled({name!r}, False): the {what} contains a NUL character; remove it")
    if len(text) > limit:
        raise ValueError(
            f"set_enabled({name!r}, False): the {what} is {len(text)} characters long; at most {limit} "
            "are kept: shorten it"
        )
    return text or None


def unknown_trigger(name: str, where: str) -> UnknownTriggerError:
    """The error for a trigger without a schedule row in ``where`` (e.g. ``store sqlite:///x.db``)."""
    return UnknownTriggerError(f"unknown trigger {name!r}: no schedule row in the {where}")


def unknown_execution(execution_id: str) -> KeyError:
    return KeyError(f"unknown execution {execution_id!r}")
