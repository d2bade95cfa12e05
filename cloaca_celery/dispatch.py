"""The dispatcher: one beat entry that turns due schedule rows into poll messages.

Beat cannot hold one entry per trigger at scale (each message costs O(entries)
in the default scheduler), so beat sends a single ``cloaca.dispatch`` task on
a short tick. It claims the due triggers in one indexed query and publishes
their polls on one producer connection, each carrying its
:class:`~cloaca_celery.slots.Slot` and expiring when the slot's ``start_by``
has passed, so an outage or a backlog leaves no burst of stale polls behind.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, current_app
from celery.schedules import schedstate, schedule

from .batches import Entry, backstop_limits, entries_message, form_batches
from .clock import StoreClock
from .counters import HealthCounter
from .logs import log_throttled, one_line
from .polling import late_polls
from .settings import Settings
from .slots import Slot
from .store import Store
from .triggers import triggers

logger = logging.getLogger("cloaca_celery.dispatch")

MIN_TICK = 0.05
MAX_TICK = 1.0
BEAT_DRIFT = 0.010  # what celery.beat.Scheduler.adjust takes off every sleep


def auto_dispatch_interval() -> float:
    """A twentieth of the shortest poll interval, between 50 ms and 1 s.

    A slot waits for the next tick to be sent, so the tick bounds how late a
    poll starts: at most a twentieth of its interval (50 ms for ``1s``
    triggers), never more than a second. A tick that finds nothing due costs
    one indexed ``UPDATE`` that matches no row.
    """
    shortest = triggers.shortest_interval()
    if shortest is None:
        return MAX_TICK
    return min(MAX_TICK, max(MIN_TICK, shortest / 20))


class DispatchSchedule(schedule):
    """A ``schedule`` whose period is read when beat asks, not when it is created.

    Triggers are often imported after ``install(app)`` runs (autodiscovery),
    so the tick is resolved from the registry at the moment beat uses it.
    Beat's default scheduler keeps its entries in a ``shelve`` file and reads
    them back pickled: the copy it reads is a ``DispatchSchedule`` again,
    resolving its period through the app it was made for (or the current
    app), with the period it had when written as the fallback.
    """

    def __init__(self, resolve: Callable[[], float], app: Celery | None = None) -> None:
        self._resolve = resolve
        super().__init__(run_every=timedelta(seconds=1), app=app)
        if app is not None:
            _resolvers[app] = resolve

    @property  # type: ignore[override]
    def run_every(self) -> timedelta:
        return timedelta(seconds=self._resolve())

    @run_every.setter
    def run_every(self, value: Any) -> None:
        """Ignored: the period always comes from the resolver."""

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Celery's answer, with the next check moved on by beat's drift.

        Beat sleeps 10 ms less than it is told (``Scheduler.adjust``) and,
        woken before the entry is due, ticks again at once, without sleeping,
        until it is: on a 50 ms tick that spin took a fifth of a CPU core.
        Told 10 ms more, beat sleeps until the entry is due.
        """
        due, next_check = super().is_due(last_run_at)
        return schedstate(due, next_check + BEAT_DRIFT)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restored_tick, (self.run_every.total_seconds(),))

    def __repr__(self) -> str:
        return f"<cloaca dispatch every {self._resolve():g}s>"


_resolvers: weakref.WeakKeyDictionary[Celery, Callable[[], float]] = weakref.WeakKeyDictionary()


def _restored_tick(seconds: float) -> DispatchSchedule:
    """A dispatch tick read back from beat's schedule file (see :class:`DispatchSchedule`)."""
    app = current_app._get_current_object()
    return DispatchSchedule(_resolvers.get(app, lambda: seconds))


EXPIRY_ALLOWANCE = 30.0
"""Added to a poll's Celery ``expires``: Celery compares the sender's clock with the receiver's.

The poll itself drops itself precisely on the store's clock (its slot's
``start_by``); Celery's own expiry, judged across two hosts' clocks, only
keeps a long backlog from piling up, so it allows for clocks this far apart.
"""


def claims_per_tick(batch_size: int, tick: float) -> int:
    """The most due slots one tick may claim: twice the registered triggers' share of a tick, at least 10.

    On time, a tick finds about ``tick x polls per second`` slots due; twice
    that lets a tick that ran late catch up. :class:`ClaimPace` keeps each
    process's ticks below it while the workers are behind.
    """
    return max(1, min(batch_size, max(CLAIMS_AT_LEAST, math.ceil(2 * tick * triggers.polls_per_second()))))


CLAIMS_AT_LEAST = 10


class ClaimPace:
    """How many slots this process's next tick claims: fewer while the ticks wait in the queue.

    A claim costs a write whether its poll is sent or shed, and a tick that
    claims (and sends) more than the workers can run makes the queue, and so
    the wait of every later tick, longer. Each process keeps its own limit,
    additive increase and multiplicative decrease on the wait of its ticks:
    a tick that waited more than two ticks halves it, one that waited less
    than one tick raises it by a tenth (at least one), up to
    :func:`claims_per_tick`. Overloaded, the dispatch claims about what the
    workers run and the queue stays a few ticks long; once the load drops,
    the limit climbs back within a few seconds.
    """

    def __init__(self) -> None:
        self.limit: float | None = None

    def next_limit(self, most: int, lag: float, tick: float) -> int:
        limit = float(most) if self.limit is None else min(self.limit, float(most))
        if lag > 2 * tick:
            limit = max(1.0, limit / 2)
        elif lag < tick:
            limit = min(float(most), limit + max(1.0, limit / 10))
        self.limit = limit
        return max(1, int(limit))


pace = ClaimPace()


def worth_sending(slot: Slot, sending: float, lag: float) -> bool:
    """Whether a poll sent now for ``slot`` will probably start by ``slot.start_by``.

    ``lag`` is how long the dispatch tick waited in the queue, from beat's send
    to its start: the polls sent now queue behind about as much. A poll that
    would spend more than half the time it has left waiting in the queue is
    not sent: its slot is claimed and counted late (shed), at the cost of
    nothing in the workers. Under more load than the workers can take, the
    queue stops growing at about a quarter of an interval, the polls sent
    start in time, and the workers spend their time on polls that run, not on
    dropping stale ones; when the load drops, the ticks run on time again and
    every slot is sent.
    """
    return lag <= (slot.start_by - sending) / 2


def dispatch_due(app: Celery, settings: Settings, store: Store, clock: StoreClock, poll_task: str,
                 options: dict[str, Any], now: float | None = None, sent: float | None = None,
                 batch_task: str | None = None, limit: int | None = None,
                 health: HealthCounter | None = None) -> int:
    """Claim the due triggers and publish their polls (with ``options``); return how many.

    The polls of cheap triggers go in ``batch_task`` messages of up to
    ``cloaca_poll_batch_size`` (:func:`cloaca_celery.batches.form_batches`),
    the others one ``poll_task`` each.

    Times are the store's. ``sent`` is when beat sent this dispatch tick (its
    stamp, see :func:`stamp_tick`); the tick's wait in the queue decides which
    due slots are still worth a poll (:func:`worth_sending`); the others are
    shed: claimed, not sent, counted late. ``limit`` (the most slots to claim)
    replaces this process's pace (:class:`ClaimPace`): a backlog is claimed at once.

    Polls are sent when due, never ahead with an
    ``eta``: a worker holding many ``eta`` tasks starts at most ten of them
    per turn of its event loop (kombu's ``Hub.fire_timers``) and may then wait
    up to a second, and a Celery 5.7.0 worker holding unacknowledged
    messages exits when the Redis connection drops.
    """
    now = clock.now() if now is None else now
    lag = max(0.0, now - sent) if sent is not None else 0.0
    longest = triggers.longest_interval()
    if longest is not None and lag > longest / 4:
        # No slot could be worth sending (see worth_sending): the ticks queued behind this one
        # drain at the cost of a message each; the due rows wait for a tick that runs in time.
        log_throttled(logger, "dispatch-behind", logging.WARNING,
                      "dispatch: this tick waited %.2fs in the queue; nothing claimed. The workers "
                      "are short of time for the polls due", lag, every=60.0)
        return 0
    tick = settings.dispatch_interval or auto_dispatch_interval()
    try:
        if limit is None:
            limit = pace.next_limit(claims_per_tick(settings.dispatch_batch_size, tick), lag, tick)
        due = store.claim_due(now, limit)
    except Exception as exc:  # noqa: BLE001 - every tick would fail alike: one line every 10 s
        log_throttled(logger, "dispatch-store", logging.WARNING,
                      "dispatch: the store is unreachable (%s); no polls until it answers", one_line(exc))
        return 0
    if not due:
        return 0
    sent_polls = 0
    shed: list[str] = []
    polls: list[Entry] = []
    sending = clock.now()
    for item in due:
        slot = Slot.claimed(item.due, item.next_due, item.poll_interval, sending, item.errors)
        if worth_sending(slot, sending, lag):
            polls.append((item.trigger_name, slot))
        else:
            shed.append(item.trigger_name)
    alone, batches = form_batches(polls, settings.poll_batch_size if batch_task else 1)
    try:
        with app.producer_or_acquire() as producer:
            for name, slot in alone:
                app.send_task(
                    poll_task, args=(name,), kwargs={"slot": slot.as_message()},
                    producer=producer, expires=expires_in(slot.start_by, sending),
                    ignore_result=True, **options,
                )
                sent_polls += 1
            for batch in batches:
                send_batch(app, batch_task or poll_task, batch, options, sending, producer)
                sent_polls += len(batch)
    except Exception as exc:  # noqa: BLE001 - the dropped polls come back next interval
        log_throttled(
            logger, "dispatch-broker", logging.WARNING,
            "dispatch: the broker refused publishing (%s); %d of %d due polls dropped until "
            "their next interval", exc, len(polls) - sent_polls, len(due),
        )
    if shed:
        shed_late(shed, lag, health)
    return sent_polls


def expires_in(start_by: float, sending: float) -> float:
    """A poll message's Celery ``expires``: its ``start_by``, plus :data:`EXPIRY_ALLOWANCE` for clocks."""
    return max(start_by - sending, 0.0) + EXPIRY_ALLOWANCE


def send_batch(app: Celery, batch_task: str, entries: list[Entry], options: dict[str, Any],
               sending: float, producer: Any = None) -> None:
    """Publish one ``batch_task`` message polling ``entries`` (expiring with its latest ``start_by``)."""
    app.send_task(
        batch_task, args=(entries_message(entries),), producer=producer,
        expires=expires_in(max(slot.start_by for _, slot in entries), sending), ignore_result=True,
        **backstop_limits(options, len(entries)),
    )


def shed_late(names: list[str], lag: float, health: HealthCounter | None = None) -> None:
    """Slots claimed and not sent, because the tick found the queue too far behind: counted late."""
    for name in names:
        late_polls[name] = late_polls.get(name, 0) + 1
        if health is not None:
            health.count(name, late=1)
    log_throttled(
        logger, "dispatch-shed", logging.WARNING,
        "dispatch: %d due polls not sent (first: %s): this tick waited %.2fs in the queue, so they "
        "would start too late; counted as late. The workers are short of time for the polls due",
        len(names), names[0], lag, every=60.0,
    )


def stamp_tick(body: Any, now: float) -> None:
    """Write beat's send time (the store's clock) into a dispatch tick's keyword arguments.

    Called from ``before_task_publish`` in beat's process: the tick's own wait
    in the queue is then measured on one clock, the store's, whatever the
    hosts' clocks say.
    """
    if isinstance(body, (tuple, list)) and len(body) >= 2 and isinstance(body[1], dict):
        body[1]["sent"] = now
