"""Batched polls: one ``cloaca.poll_batch`` message polls many cheap triggers, each on its own terms.

A cheap poll costs microseconds, the Celery message around it about a
millisecond, so the dispatcher sends the due polls of cheap triggers in
batches (:func:`form_batches`). Each entry of a batch is a whole scheduled
poll (:meth:`cloaca_celery.polling.Poller.poll` with its own
:class:`~cloaca_celery.slots.Slot`): dropped late past its own ``start_by``,
its lease taken by the watchdog if it runs up to its own ``lease_by``, its own
errors, fire, deduplication and overlap policy. What a batch adds is kept
here:

* which triggers are cheap (:class:`PollMeasures`): measured in this process
  (slow, hanging or firing triggers get a message of their own), or declared
  with ``@trigger(batch=...)``;
* an entry that runs past :data:`HANDBACK_AFTER` hands the rest of its batch
  back: the watchdog thread re-publishes the entries not yet begun as a new
  batch, so a hung trigger never delays the others past their slots;
* an entry's own time limit (:func:`entry_time_limit`): a ``SIGALRM`` timer in
  the main thread (prefork and solo pools run tasks there), raising Celery's
  ``SoftTimeLimitExceeded`` inside the trigger, which the poll records as its
  timeout. On the threads pool there is no such timer: the hung entry runs on
  (as a hung single poll does there) while the rest of its batch has been
  handed back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from .polling import Poller, PollReport
from .slots import Slot
from .triggers import TriggerDefinition, triggers
from .watchdog import watchdog

logger = logging.getLogger("cloaca_celery.batches")

Entry = tuple[str, Slot]
"""One poll of a batch: the trigger's name and its slot."""

SLOW_POLL = 0.05
"""A trigger whose polls take longer than this (seconds, moving average) is sent alone."""

FIRING_SHARE = 0.2
"""A trigger that fires more often than this share of its polls (moving average) is sent alone."""

HANDBACK_AFTER = 0.1
"""An entry still running after this many seconds hands the rest of its batch back."""

BACKSTOP_MARGIN = 1.0
"""Seconds a batch message's own Celery time limits leave after its entries' limits could have
fired (see :func:`backstop_limits`)."""

_WEIGHT = 0.2  # of the newest poll in a moving average

FIRED = frozenset({"fired", "deduplicated", "buffered", "cancelling"})
"""Poll statuses where the function fired (see :class:`cloaca_celery.polling.PollReport`)."""


class PollMeasures:
    """How long each trigger's polls took in this process, and how often they fired.

    Kept in memory, per process, with no write: a trigger nobody here has
    polled yet counts as cheap. A trigger measured slow, timed out, or firing
    often is sent alone until its moving averages come back down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._fires: dict[str, float] = {}

    def record(self, name: str, seconds: float, report: PollReport) -> None:
        if report.status == "not_polled":
            return
        fired = 1.0 if report.status in FIRED else 0.0
        if report.status == "error" and "timed out" in report.detail:
            seconds = max(seconds, SLOW_POLL * 10)
        with self._lock:
            old = self._seconds.get(name)
            self._seconds[name] = seconds if old is None else old + _WEIGHT * (seconds - old)
            old_fires = self._fires.get(name, 0.0)
            self._fires[name] = old_fires + _WEIGHT * (fired - old_fires)

    def batchable(self, definition: TriggerDefinition) -> bool:
        """Whether a poll of ``definition`` may share a message: its ``batch=`` option, else as measured."""
        if definition.batch is not None:
            return definition.batch
        with self._lock:
            seconds = self._seconds.get(definition.name, 0.0)
            fires = self._fires.get(definition.name, 0.0)
        return seconds <= SLOW_POLL and fires <= FIRING_SHARE

    def forget(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._fires.clear()


measures = PollMeasures()


def batchable(name: str) -> bool:
    """Whether the trigger ``name`` (registered here) may be polled in a batch now."""
    return name in triggers and measures.batchable(triggers.get(name))


def form_batches(
    polls: Sequence[Entry], size: int, cheap: Callable[[str], bool] = batchable
) -> tuple[list[Entry], list[list[Entry]]]:
    """Split due polls into those sent alone and batches of at most ``size`` cheap ones.

    A batch holds the cheap polls in the order they must start (earliest
    ``start_by`` first), so the ones with the least time run first. A batch
    of one is sent alone; ``size`` 1 turns batching off.
    """
    alone = [p for p in polls if size <= 1 or not cheap(p[0])]
    together = sorted((p for p in polls if size > 1 and cheap(p[0])), key=lambda p: p[1].start_by)
    batches: list[list[Entry]] = []
    for first in range(0, len(together), size):
        batch = together[first:first + size]
        if len(batch) == 1:
            alone.extend(batch)
        else:
            batches.append(batch)
    return alone, batches


def backstop_limits(options: dict[str, Any], entries: int) -> dict[str, Any]:
    """A batch message's options: Celery's time limits pushed past what its entries can take.

    Each entry is cut at ``cloaca_poll_time_limit`` by its own timer
    (:func:`entry_time_limit`), and an entry still running after
    :data:`HANDBACK_AFTER` hands the rest back, so a batch runs at most
    ``entries * HANDBACK_AFTER`` plus one entry's limit. Celery's limits stay
    as a backstop beyond that: with the same soft limit as an entry's, a
    batch whose first entry hangs is interrupted twice at once, the second
    time inside the code that records the first (its ``finally`` blocks, the
    store write of its timeout).
    """
    extra = entries * HANDBACK_AFTER + BACKSTOP_MARGIN
    limited = dict(options)
    for name in ("soft_time_limit", "time_limit"):
        if limited.get(name):
            limited[name] = float(limited[name]) + extra
    return limited


def entries_message(entries: Sequence[Entry]) -> list[list[Any]]:
    """A batch as the JSON its message carries: ``[[name, slot], ...]``."""
    return [[name, slot.as_message()] for name, slot in entries]


def entries_from_message(data: Sequence[Sequence[Any]]) -> list[Entry]:
    return [(str(name), Slot.from_message(slot)) for name, slot in data]


class BatchRun:
    """The entries of one batch, taken in order by the task and, past a deadline, by the watchdog."""

    def __init__(self, entries: Sequence[Entry], hand_back: Callable[[list[Entry]], None]) -> None:
        self._entries = list(entries)
        self._next = 0
        self._lock = threading.Lock()
        self._hand_back = hand_back
        self.handed_back: list[Entry] = []

    def take(self) -> Entry | None:
        """The next entry to poll, or ``None`` when none is left (or the rest was handed back)."""
        with self._lock:
            if self._next >= len(self._entries):
                return None
            self._next += 1
            return self._entries[self._next - 1]

    def give_back(self, label: str) -> bool:
        """The watchdog's deadline: re-publish the entries not yet begun. ``True``: nothing to release."""
        with self._lock:
            rest = self._entries[self._next:]
            self._next = len(self._entries)
        if rest:
            self.handed_back = rest
            logger.warning("%s: poll still running after %.2fs in a batch; the %d polls after it are "
                           "sent on in a batch of their own", label, HANDBACK_AFTER, len(rest))
            self._hand_back(rest)
        return True


@contextlib.contextmanager
def entry_time_limit(seconds: float) -> Iterator[bool]:
    """Raise ``SoftTimeLimitExceeded`` in this thread after ``seconds``, if it is the main thread.

    Yields whether the limit is armed: a ``SIGALRM`` timer needs the main
    thread (prefork children and the solo pool run tasks there; the threads
    pool does not). The previous handler and timer are restored after.
    """
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield False
        return

    def expired(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded(f"poll time limit ({seconds:g}s) exceeded")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_polling = threading.local()


def current_entry() -> Entry | None:
    """The batch entry this thread is polling now (its trigger and slot), or ``None``.

    Inside a trigger function polled in a ``cloaca.poll_batch``, where
    ``current_task.request`` is the batch's, this says which slot the poll is for.
    """
    entry: Entry | None = getattr(_polling, "entry", None)
    return entry


def run_batch(
    poller: Poller, entries: Sequence[Entry], hand_back: Callable[[list[Entry]], None], time_limit: float
) -> list[PollReport]:
    """Poll each entry of a batch in turn, each as its own scheduled poll; return their reports.

    An entry that runs past :data:`HANDBACK_AFTER` has the watchdog hand the
    entries after it back (:class:`BatchRun`); one that runs past
    ``time_limit`` is interrupted (:func:`entry_time_limit`) and recorded as
    its trigger's timeout, like a single poll cut by Celery's soft time limit.
    """
    run = BatchRun(entries, hand_back)
    reports: list[PollReport] = []
    while (entry := run.take()) is not None:
        name, slot = entry
        began = time.perf_counter()
        watch = watchdog.watch(time.time() + HANDBACK_AFTER, functools.partial(run.give_back, name), name)
        _polling.entry = entry
        try:
            with entry_time_limit(time_limit):
                report = poller.poll(name, slot)
        except SoftTimeLimitExceeded:  # fired outside the trigger's own code (a store call)
            report = PollReport(name, "error", f"timed out after {time_limit:g}s")
            logger.warning("%s: poll in a batch timed out after %gs", name, time_limit)
        finally:
            watch.cancel()
            _polling.entry = None
        measures.record(name, time.perf_counter() - began, report)
        reports.append(report)
    return reports
