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
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, current_app
from celery.schedules import schedstate, schedule

from .clock import StoreClock
from .logs import log_throttled, one_line
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


def dispatch_due(app: Celery, settings: Settings, store: Store, clock: StoreClock, poll_task: str,
                 options: dict[str, Any], now: float | None = None) -> int:
    """Claim the due triggers and publish one ``poll_task`` (with ``options``) for each; return the count.

    Times are the store's. Polls are sent when due, never ahead with an
    ``eta``: a worker holding many ``eta`` tasks starts at most ten of them
    per turn of its event loop (kombu's ``Hub.fire_timers``) and may then wait
    up to a second, and a Celery 5.7.0 worker holding unacknowledged
    messages exits when the Redis connection drops.
    """
    now = clock.now() if now is None else now
    try:
        due = store.claim_due(now, settings.dispatch_batch_size)
    except Exception as exc:  # noqa: BLE001 - every tick would fail alike: one line every 10 s
        log_throttled(logger, "dispatch-store", logging.WARNING,
                      "dispatch: the store is unreachable (%s); no polls until it answers", one_line(exc))
        return 0
    if not due:
        return 0
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for item in due:
                sending = clock.now()
                slot = Slot.claimed(item.due, item.next_due, item.poll_interval, sending, item.errors)
                app.send_task(
                    poll_task, args=(item.trigger_name,), kwargs={"slot": slot.as_message()},
                    producer=producer, expires=max(slot.start_by - sending, 0.0) + EXPIRY_ALLOWANCE,
                    ignore_result=True, **options,
                )
                sent += 1
    except Exception as exc:  # noqa: BLE001 - the dropped polls come back next interval
        log_throttled(
            logger, "dispatch-broker", logging.WARNING,
            "dispatch: the broker refused publishing (%s); %d of %d due polls dropped until "
            "their next interval", exc, len(due) - sent, len(due),
        )
    return sent
