"""When a trigger is unhealthy: the rules that ``cloaca check``, ``cloaca metrics`` and the admin apply.

A trigger is unhealthy when

* its last :data:`UNHEALTHY_AFTER_ERRORS` polls failed in a row (one or two
  failures are a warning: a network blip should not fail a liveness probe); or
* it is enabled and has not been polled for :data:`STALE_AFTER_INTERVALS`
  poll intervals (no worker or no beat is running, or the workers are too
  busy to poll it). The last poll is the latest the health counts recorded
  (:mod:`cloaca_celery.counters`, written every ``cloaca_health_flush_interval``,
  which is added as slack) or the schedule row's ``last_poll_at``; a trigger
  never polled counts from when its row was last changed (created, enabled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .durations import format_duration

UNHEALTHY_AFTER_ERRORS = 3
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class TriggerHealth:
    """``status`` is ``ok``, ``warning`` or ``unhealthy``; ``reason`` says why (empty when ok)."""

    trigger_name: str
    status: str
    reason: str = ""


def last_polled(schedule: Mapping[str, Any], counted: datetime | None) -> datetime | None:
    """The later of the health counts' last poll and the schedule row's ``last_poll_at``."""
    stamped = schedule.get("last_poll_at")
    times = [at for at in (stamped, counted) if at is not None]
    return max(times) if times else None


def _stale(schedule: Mapping[str, Any], last_polled_at: datetime | None, now: datetime,
           slack: float) -> str:
    """Why the trigger counts as not polled (empty if it was polled recently enough)."""
    interval = float(schedule["poll_interval"])
    allowed = STALE_AFTER_INTERVALS * interval + slack
    since = last_polled_at or schedule.get("updated_at") or schedule.get("created_at")
    if since is None:
        return ""
    idle = (now - since).total_seconds()
    if idle <= allowed:
        return ""
    what = f"last polled at {since:%Y-%m-%d %H:%M:%S} UTC" if last_polled_at else "never polled"
    return (
        f"not polled for {_for_people(idle)} ({what}), more than {STALE_AFTER_INTERVALS} "
        f"intervals of {format_duration(interval)}: are a worker and beat running, and do the workers "
        "keep up with the polls (see the late polls in `celery cloaca stats`)?"
    )


def _for_people(seconds: float) -> str:
    """``45s``, ``10m``, ``3.5h``, ``2.1d``: precise enough for how long a trigger went unpolled."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def assess_schedule(
    schedule: Mapping[str, Any], *, last_polled_at: datetime | None = None, now: datetime | None = None,
    slack: float = 0.0,
) -> TriggerHealth:
    """The health of one trigger from its schedule row (a store's schedule dict).

    With ``now`` (the store's clock) the "not polled" rule applies too, from
    ``last_polled_at`` (see :func:`last_polled`), allowing ``slack`` seconds
    more than the intervals (the health counts' flush interval).
    """
    name = schedule["trigger_name"]
    if not schedule.get("enabled", True) or not schedule.get("registered", True):
        return TriggerHealth(name, "ok")
    errors = int(schedule.get("consecutive_errors") or 0)
    if errors >= UNHEALTHY_AFTER_ERRORS or (errors and now is None):
        return _failing(schedule, errors)
    if now is not None:
        stale = _stale(schedule, last_polled(schedule, last_polled_at), now, slack)
        if stale:
            return TriggerHealth(name, "unhealthy", stale)
    return _failing(schedule, errors) if errors else TriggerHealth(name, "ok")


def _failing(schedule: Mapping[str, Any], errors: int) -> TriggerHealth:
    last = (schedule.get("last_error") or "no error text recorded").strip()
    at = schedule.get("last_error_at")
    when = f" at {at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else ""
    polls = "poll" if errors == 1 else f"{errors} polls"
    reason = f"its last {polls} failed; the last error{when}: {last}"
    status = "unhealthy" if errors >= UNHEALTHY_AFTER_ERRORS else "warning"
    return TriggerHealth(schedule["trigger_name"], status, reason)


def assess_all(
    schedules: Iterable[Mapping[str, Any]], last_polls: Mapping[str, datetime], now: datetime, slack: float,
) -> list[TriggerHealth]:
    """:func:`assess_schedule` of every schedule, with the last polls of :meth:`Store.last_polls`."""
    return [
        assess_schedule(s, last_polled_at=last_polls.get(s["trigger_name"]), now=now, slack=slack)
        for s in schedules
    ]


LOOK_BACK_AT_LEAST = 86400.0
"""Seconds of health counts :func:`counted_since` reads at least."""


def counted_since(schedules: Iterable[Mapping[str, Any]], now: datetime, slack: float) -> datetime:
    """From when to read the health counts' last polls (:meth:`Store.last_polls`) for the "not polled"
    rule: twice the longest time a trigger of ``schedules`` may go unpolled, and at least a day. A
    poll older than that changes no verdict (the trigger is unhealthy either way), only the reason's
    "last polled at" (then the schedule row's, or "never polled")."""
    longest = max((STALE_AFTER_INTERVALS * float(s["poll_interval"]) + slack for s in schedules), default=0.0)
    return now - timedelta(seconds=max(2 * longest, LOOK_BACK_AT_LEAST))


def slack_of(flush_interval: float) -> float:
    """The slack of the "not polled" rule: a poll's count reaches the store within a flush interval
    (plus a second for the write)."""
    return flush_interval + 1.0
