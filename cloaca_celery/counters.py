"""Trigger health counters: counted in each process, written a row per group of triggers and minute.

A skipped poll must cost the store nothing, so a poll is not a write: each
process counts, per (trigger, minute of the store's clock), its polls, skips,
fires, fires held back by the overlap policy (by policy), pending fires,
cancelled executions, dropped pending fires, errors, polls dropped as late,
the poll durations and the fire -> first step latencies. A daemon thread
writes the counts that changed every ``cloaca_health_flush_interval`` (and
the worker writes the rest when it stops): one row per minute, process and
group of triggers (:func:`health_shard`: :data:`HEALTH_SHARDS` groups by a
hash of the name), holding that process's totals for the minute of each
trigger of the group. A skipped poll therefore adds no store row of its own:
a flush writes at most :data:`HEALTH_SHARDS` rows per minute however many
triggers it counted. A row is replaced,
never added to, so a write that failed is simply made again; rows of the
same minute from several processes and hosts are summed when read
(:func:`merge`).

Durations are kept in a small fixed histogram (:data:`BUCKETS`), so rows can
be merged: the maximum is exact, the median is the upper bound of the bucket
that holds it (approximate).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger("cloaca_celery.counters")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the duration histograms; one more bucket holds what is longer."""

HELD_POLICIES = ("skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other")
"""The overlap policies that hold a fire back (``allow`` never does)."""

COUNTS = (
    "polls", "skips", "fires", *(f"held_{policy}" for policy in HELD_POLICIES),
    "pending", "cancelled", "dropped", "errors", "late",
)
"""The counters of a health row, in the order shown."""

STOP_TIMEOUT = 5.0
"""Seconds a process that is ending waits for its last health counts to be written."""

HEALTH_SHARDS = 16
"""How many groups a process's health counts of a minute are written in (one row each).

More groups make a trigger's chart read less (only its group's rows) and a
flush write more rows; 16 keeps both small."""

OUTCOMES = ("skips", "fires", "held", "errors")
"""What a poll that ran ended as (a poll is exactly one of them)."""


def minute_of(at: float) -> datetime:
    """The start of the minute (UTC) that holds epoch second ``at``."""
    return datetime.fromtimestamp(at - at % 60, tz=timezone.utc)


def health_shard(trigger_name: str) -> int:
    """The group (0 to :data:`HEALTH_SHARDS` - 1) whose health row holds ``trigger_name``'s counts."""
    return zlib.crc32(trigger_name.encode("utf-8")) % HEALTH_SHARDS


def _empty() -> list[int]:
    return [0] * (len(BUCKETS) + 1)


def bucket_of(seconds: float) -> int:
    """The index of the first bucket whose upper bound holds ``seconds`` (``len(BUCKETS)``: longer)."""
    return bisect_left(BUCKETS, seconds)


def median(buckets: list[int], largest: float) -> float | None:
    """The approximate median of a histogram: the upper bound of the bucket that holds it (at most
    ``largest``, the exact maximum); ``None`` when it is empty."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen * 2 >= total:
            return min(BUCKETS[index], largest) if index < len(BUCKETS) else largest
    return largest


@dataclass
class Durations:
    """A mergeable histogram of durations (seconds): counts per :data:`BUCKETS`, sum and maximum."""

    buckets: list[int] = field(default_factory=_empty)
    total: float = 0.0
    largest: float = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.buckets[bucket_of(seconds)] += 1
        self.total += seconds
        self.largest = max(self.largest, seconds)

    def add(self, other: Durations) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.total += other.total
        self.largest = max(self.largest, other.largest)

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @property
    def p50(self) -> float | None:
        return median(self.buckets, self.largest)

    def copy(self) -> Durations:
        return Durations(list(self.buckets), self.total, self.largest)


@dataclass
class HealthCounts:
    """One trigger's counts over one minute (one process's, or the sum of every process's)."""

    trigger_name: str
    minute: datetime
    polls: int = 0
    skips: int = 0
    fires: int = 0
    held_skip: int = 0
    held_buffer_one: int = 0
    held_buffer_all: int = 0
    held_cancel_other: int = 0
    held_terminate_other: int = 0
    pending: int = 0
    cancelled: int = 0
    dropped: int = 0
    errors: int = 0
    late: int = 0
    poll_seconds: Durations = field(default_factory=Durations)
    latency_seconds: Durations = field(default_factory=Durations)
    last_poll_at: datetime | None = None

    @property
    def held(self) -> dict[str, int]:
        """Fires held back by the overlap policy, by policy."""
        return {policy: int(getattr(self, f"held_{policy}")) for policy in HELD_POLICIES}

    def add(self, other: HealthCounts) -> None:
        """Add ``other``'s counts (another process's row of the same trigger and minute)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.poll_seconds.add(other.poll_seconds)
        self.latency_seconds.add(other.latency_seconds)
        if other.last_poll_at is not None:
            self.last_poll_at = max(self.last_poll_at or other.last_poll_at, other.last_poll_at)

    def copy(self) -> HealthCounts:
        # Made under the counter's lock, thousands at a time: no dataclass machinery.
        twin = object.__new__(HealthCounts)
        twin.__dict__.update(self.__dict__)
        twin.poll_seconds = self.poll_seconds.copy()
        twin.latency_seconds = self.latency_seconds.copy()
        return twin

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape of ``cloaca stats --json`` (see ``docs/cli.md``)."""
        return {
            "trigger_name": self.trigger_name,
            "minute": self.minute.isoformat(),
            **{name: getattr(self, name) for name in ("polls", "skips", "fires")},
            "held": self.held,
            **{name: getattr(self, name) for name in ("pending", "cancelled", "dropped", "errors", "late")},
            "poll_seconds": _durations_dict(self.poll_seconds),
            "latency_seconds": _durations_dict(self.latency_seconds),
            "last_poll_at": self.last_poll_at.isoformat() if self.last_poll_at else None,
        }


def _durations_dict(durations: Durations) -> dict[str, Any]:
    count = durations.count
    return {"count": count, "p50": durations.p50, "max": durations.largest if count else None}


def merge(rows: Iterable[HealthCounts]) -> list[HealthCounts]:
    """Sum rows of the same (trigger, minute) from every process; sorted by trigger, then minute."""
    merged: dict[tuple[str, datetime], HealthCounts] = {}
    for row in rows:
        key = (row.trigger_name, row.minute)
        if key in merged:
            merged[key].add(row)
        else:
            merged[key] = row.copy()
    return [merged[key] for key in sorted(merged)]


def total(rows: Iterable[HealthCounts], trigger_name: str, minute: datetime) -> HealthCounts:
    """The sum of ``rows`` (any minutes) as one :class:`HealthCounts` stamped ``minute``."""
    summed = HealthCounts(trigger_name, minute)
    for row in rows:
        summed.add(row)
    return summed


def process_key() -> str:
    """This process's name in the health rows: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class HealthCounter:
    """The counts of this process, and the thread that writes them (one per installation).

    ``write(process, rows)`` saves rows (replacing this process's rows of the
    same trigger and minute); ``now`` is the store's clock. Counting takes a
    lock and a dict update; nothing here waits on the store except the thread.
    """

    def __init__(self, write: Callable[[str, list[HealthCounts]], None], now: Callable[[], float],
                 interval: float) -> None:
        self._write = write
        self._now = now
        self.interval = interval
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows: dict[tuple[str, datetime], HealthCounts] = {}
        self._dirty: set[tuple[str, datetime]] = set()
        self._pid = 0
        self._process = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._minute = (0.0, minute_of(0.0))  # the last minute looked up: (its epoch second, itself)
        self._last_poll: dict[tuple[str, datetime], float] = {}  # made a datetime when read

    @property
    def process(self) -> str:
        return self._process

    def _row(self, trigger_name: str, at: float | None, thread: bool = True) -> HealthCounts:
        """The row of ``trigger_name`` for the minute of ``at`` (called under the lock); with
        ``thread``, the flusher thread runs from now on."""
        if self._pid != os.getpid():
            # A forked pool child inherits the parent's counts and not its thread: it starts afresh.
            self._pid = os.getpid()
            self._process = process_key()
            self._rows, self._dirty, self._last_poll = {}, set(), {}
            self._thread = None
        key = (trigger_name, self._minute_of(self._now() if at is None else at))
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = HealthCounts(*key)
        self._dirty.add(key)
        if thread and self._thread is None:  # it runs until stop(), which drops it
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="cloaca-health", daemon=True)
            self._thread.start()
        return row

    def _minute_of(self, at: float) -> datetime:
        start = at - at % 60
        if self._minute[0] != start:
            self._minute = (start, minute_of(at))
        return self._minute[1]

    def _rows_of(self, keys: Iterable[tuple[str, datetime]]) -> list[HealthCounts]:
        """Copies of the rows of ``keys``, with their last poll (called under the lock)."""
        rows = []
        for key in keys:
            row = self._rows[key].copy()
            last = self._last_poll.get(key)
            if last is not None:
                row.last_poll_at = datetime.fromtimestamp(last, tz=timezone.utc)
            rows.append(row)
        return rows

    def count(self, trigger_name: str, at: float | None = None, *, thread: bool = True,
              **increments: int) -> None:
        """Add ``increments`` (names of :data:`COUNTS`) to the trigger's current minute.

        ``thread=False`` counts without starting the flusher thread (in a prefork
        worker's main process, which must not run a thread when it forks a new
        pool process): the counts wait for a thread a poll started, or for
        :meth:`stop` at shutdown.
        """
        with self._lock:
            row = self._row(trigger_name, at, thread)
            for name, value in increments.items():
                setattr(row, name, getattr(row, name) + value)

    def poll(self, trigger_name: str, outcome: str, overlap: str, started: float, ended: float, *,
             pending: bool = False, cancelled: bool = False, dropped: int = 0) -> None:
        """A poll ran: ``outcome`` is ``skipped``, ``fired``, ``error`` or a held status of
        :class:`cloaca_celery.firing.Fire` (then ``overlap`` says by which policy)."""
        with self._lock:
            row = self._row(trigger_name, ended)
            row.polls += 1
            if outcome == "skipped":
                row.skips += 1
            elif outcome == "fired":
                row.fires += 1
            elif outcome == "error":
                row.errors += 1
            else:
                name = f"held_{overlap if overlap in HELD_POLICIES else 'skip'}"
                setattr(row, name, getattr(row, name) + 1)
            row.pending += int(pending)
            row.cancelled += int(cancelled)
            row.dropped += dropped
            row.poll_seconds.observe(ended - started)
            self._last_poll[(trigger_name, row.minute)] = ended

    def latency(self, trigger_name: str, fired_at: float, started_at: float) -> None:
        """The first step of an execution fired at ``fired_at`` started at ``started_at``."""
        with self._lock:
            self._row(trigger_name, started_at).latency_seconds.observe(started_at - fired_at)

    def flush(self) -> int:
        """Write the counts of the groups that changed since the last flush; how many triggers' rows
        were written.

        A group (a minute and a :func:`health_shard`) is written whole: the
        store replaces this process's row of the group, so it gets the totals
        of every trigger of the group counted in that minute. Counts of a
        minute that has passed are forgotten once written; a write that fails
        keeps them for the next flush (the rows are totals, so a repeated
        write is harmless).
        """
        with self._flush_lock:
            with self._lock:
                if self._pid != os.getpid() or not self._dirty:
                    return 0
                groups = {(minute, health_shard(name)) for name, minute in self._dirty}
                keys = sorted(key for key in self._rows if (key[1], health_shard(key[0])) in groups)
                rows = self._rows_of(keys)
                self._dirty.clear()
                process = self._process
            try:
                self._write(process, rows)
            except Exception:
                with self._lock:
                    self._dirty.update(key for key in keys if key in self._rows)
                raise
            # The minute before this one is kept: a count that comes in late for it (a poll that
            # ended just before the minute turned) rewrites its group with every trigger's totals.
            kept = minute_of(self._now() - 60)
            with self._lock:
                for key in [key for key in self._rows if key[1] < kept and key not in self._dirty]:
                    del self._rows[key]
                    self._last_poll.pop(key, None)
            return len(rows)

    def discard(self) -> None:
        """Forget the counts not yet written (a test whose process counted polls of its own)."""
        with self._lock:
            self._rows, self._dirty, self._last_poll = {}, set(), {}

    def snapshot(self) -> list[HealthCounts]:
        """This process's counts not yet forgotten (tests and ``flush`` diagnostics)."""
        with self._lock:
            return self._rows_of(sorted(self._rows))

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Write what is left (worker shutdown), waiting at most ``timeout`` seconds; the thread ends.

        A process that is ending must not hang on a store that does not answer
        (or on a flush it interrupted): past ``timeout`` the counts are given up.
        """
        with self._lock:
            self._stop.set()
            self._thread = None  # a count after this starts a new one
        failed: list[BaseException] = []

        def last_flush() -> None:
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - reported below
                failed.append(exc)

        writer = threading.Thread(target=last_flush, name="cloaca-health-last", daemon=True)
        writer.start()
        writer.join(timeout)
        if writer.is_alive() or failed:
            why = " ".join(str(failed[0]).split())[:300] if failed else f"no answer within {timeout:g}s"
            logger.warning("health: the last counts of this process were not saved: %s", why)

    def _run(self) -> None:
        stop = self._stop
        failures = 0
        while not stop.wait(self.interval):
            try:
                self.flush()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - kept, and written at the next flush
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    logger.warning("health: counts not saved (%d tries), kept for the next: %s",
                                   failures, " ".join(str(exc).split())[:300])
