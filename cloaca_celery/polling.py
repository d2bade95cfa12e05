"""Polling: run one trigger once, under its lease, and record what it said.

This is the body of the ``cloaca.poll`` task. Beat's dispatcher (with the
poll's :class:`~cloaca_celery.slots.Slot`), the CLI's ``poll --fire`` and the
admin's "poll now" (without one) all come here, so the lease that stops
overlapping polls, the error accounting and the deduplication claim of a
fire (:mod:`cloaca_celery.firing`) apply to every path alike.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from .clock import StoreClock
from .context import check_json_value
from .counters import HealthCounter
from .errors import ContextError, UnknownTriggerError
from .firing import Fire, Firer
from .logs import error_text, log_throttled, one_line
from .settings import Settings
from .slots import Slot
from .store import PollLease, PollOutcome, PollRefusal, Store
from .triggers import TriggerDefinition, triggers
from .watchdog import LeaseWatch, watchdog

logger = logging.getLogger("cloaca_celery.polling")


@dataclass(frozen=True)
class PollReport:
    """What one poll did: ``skipped``, ``fired``, ``deduplicated``, ``buffered``, ``cancelling``,
    ``error`` or ``not_polled`` (see :class:`cloaca_celery.firing.Fire` for the fire statuses)."""

    trigger_name: str
    status: str
    detail: str = ""
    execution_id: str | None = None
    context_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger_name": self.trigger_name, "status": self.status, "detail": self.detail,
            "execution_id": self.execution_id, "context_hash": self.context_hash,
        }


def dropped_late(name: str, late_by: float, health: HealthCounter | None = None,
                 in_pool: bool = True) -> None:
    """A poll that waited too long to start: counted (in ``health`` too), and logged at most once a
    minute per trigger. ``in_pool=False``: counted by a worker's main process (see
    :meth:`~cloaca_celery.counters.HealthCounter.count`)."""
    late_polls[name] = late_polls.get(name, 0) + 1
    if health is not None:
        health.count(name, late=1, thread=in_pool)
    log_throttled(
        logger, f"late:{name}", logging.WARNING,
        "%s: poll dropped unrun: it started %.2fs after it had to (half an interval after it was sent); "
        "%d dropped so far in this process. The workers are short of time for the polls due",
        name, late_by, late_polls[name], every=60.0,
    )


late_polls: dict[str, int] = {}
"""Polls dropped as late in this process, by trigger (since it started)."""


class Poller:
    """Runs polls for one app against one store (one per worker process)."""

    def __init__(self, settings: Settings, store: Store, clock: StoreClock, firer: Firer,
                 health: HealthCounter | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.firer = firer
        self.health = health

    def poll(self, name: str, slot: Slot | None = None, *, now: float | None = None) -> PollReport:
        """Poll ``name`` once; with ``slot``, as the scheduled poll of that slot.

        A scheduled poll owns the trigger until ``slot.lease_by`` without a
        lease in the store: the next slot is not claimed before then. A
        trigger that keeps no ``state`` does not even read its row (the slot
        carries the error count): a skip costs the store nothing. A lease is
        written only if the poll is still running at ``lease_by`` (the
        watchdog writes it then). A poll that starts after ``slot.start_by``
        is dropped (``late``). Manual polls (CLI, admin) take the lease at once.
        """
        try:
            definition = triggers.get(name)
        except UnknownTriggerError as exc:
            logger.warning("%s: not polled: %s (is this worker running the same code as beat?)", name, exc)
            return PollReport(name, "not_polled", "unknown trigger")
        started = self.clock.now() if now is None else now
        if slot is not None and started > slot.start_by:
            # Waited in the queue more than half an interval: the next slot's poll would follow
            # at once, and under load a late poll only makes the next one later. Dropped, at no cost.
            dropped_late(name, started - slot.start_by, self.health)
            return PollReport(name, "not_polled", "late")
        lease_seconds = self.settings.poll_hard_time_limit + 5.0
        taken: PollLease | PollRefusal
        if slot is not None and not definition.takes_state:
            taken = PollLease(name, "", slot.next_due, consecutive_errors=slot.errors, held=False)
        else:
            try:
                taken = self._begin(definition, started, lease_seconds, take_lease=slot is None)
            except Exception as exc:  # noqa: BLE001 - an unreachable store: one line, poll again next interval
                logger.warning("%s: not polled: the store is unreachable: %s", name, one_line(exc))
                return PollReport(name, "not_polled", "store unreachable")
        if isinstance(taken, PollRefusal):
            logger.debug("%s: not polled (%s)", name, taken.reason)
            return PollReport(name, "not_polled", taken.reason)
        watch: LeaseWatch | None = None
        if slot is not None:
            store = self.store
            taken = replace(taken, token=uuid.uuid4().hex)
            watch_token = taken.token

            clock = self.clock

            def take() -> bool:
                at = clock.now()
                return store.extend_poll_lease(name, watch_token, at + lease_seconds, at)

            # The watchdog waits on this host's clock: the deadline, moved from the store's.
            watch = watchdog.watch(slot.lease_by - clock.offset, take, name)
        not_before = started + definition.poll_interval / 2 if slot is not None else None
        return self._poll_leased(definition, taken, watch, not_before)

    def _begin(
        self, definition: TriggerDefinition, now: float, lease_seconds: float, take_lease: bool
    ) -> PollLease | PollRefusal:
        """Read the trigger's row (and take its lease, for a manual poll); create a missing row."""
        token = uuid.uuid4().hex if take_lease else ""
        taken = self.store.begin_poll(definition.name, now, lease_seconds, token, hold=take_lease)
        if isinstance(taken, PollRefusal) and taken.reason == "missing":
            self.store.sync_triggers([definition.spec()], now, prune=False)
            taken = self.store.begin_poll(definition.name, now, lease_seconds, token, hold=take_lease)
        return taken

    def _poll_leased(
        self, definition: TriggerDefinition, lease: PollLease, watch: LeaseWatch | None,
        not_before: float | None,
    ) -> PollReport:
        name = definition.name
        state = json.loads(json.dumps(lease.state)) if definition.takes_state else None
        report: PollReport
        error: str | None = None
        fired_at: datetime | None = None
        deduplicated = False
        fire: Fire | None = None
        began = self.clock.now()
        try:
            result = definition.evaluate(state)
        except SoftTimeLimitExceeded:
            error = f"timed out after {self.settings.poll_time_limit:g}s (setting cloaca_poll_time_limit)"
            report = PollReport(name, "error", error)
            logger.warning("%s: poll %s", name, error)
        except Exception as exc:  # noqa: BLE001 - the trigger's own failure is recorded, not raised
            error = error_text(exc)
            report = PollReport(name, "error", error)
            self._log_error(definition, lease, error, exc)
        else:
            if result.is_skip_result():
                report = PollReport(name, "skipped")
            else:
                try:
                    fire = self.firer.fire(definition, result)
                except Exception as exc:  # noqa: BLE001 - a failed fire is recorded on the schedule
                    error = f"fire failed: {error_text(exc)}"
                    report = PollReport(name, "error", error)
                    self._log_error(definition, lease, error, exc)
                else:
                    report = PollReport(name, fire.status, definition.workflow, fire.execution_id,
                                        fire.context_hash)
                    fired_at = fire.fired_at
                    deduplicated = fire.status != "fired"  # held back by the overlap policy
        new_state: dict[str, Any] | None = None
        if state is not None and state != lease.state:
            try:
                new_state = check_json_value(state, f"trigger {name!r}: state")
            except ContextError as exc:
                error = error or str(exc)
                logger.warning("%s: state not saved: %s", name, exc)
                if report.status != "fired":
                    report = PollReport(name, "error", str(exc))
        if self.health is not None:
            self._count(definition, report.status, fire, began)
        if watch is not None and watch.cancel():
            lease = replace(lease, held=True)
        try:
            saved = self.store.finish_poll(
                lease,
                PollOutcome(error=error, fired_at=fired_at, state=new_state, deduplicated=deduplicated),
                self.clock.now(), not_before,
            )
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself; report and go on
            logger.warning("%s: poll outcome not saved: the store is unreachable: %s", name, one_line(exc))
            return report
        if not saved:
            why = "outlived its lease" if lease.held else "found its state changed by another poll"
            logger.warning("%s: poll %s; its outcome and state were not saved", name, why)
        return report

    def _count(self, definition: TriggerDefinition, status: str, fire: Fire | None, began: float) -> None:
        """Count the poll in this process's health counts (no store write: see :mod:`.counters`).

        ``dropped`` counts the pending fires ``buffer_all`` dropped past ``max_pending``; the
        pending fire a newer one replaces under ``buffer_one`` is not counted as dropped.
        """
        assert self.health is not None
        held = fire is not None and status not in ("fired", "error")
        self.health.poll(
            definition.name, status, definition.overlap, began, self.clock.now(),
            pending=held and status in ("buffered", "cancelling"),
            cancelled=fire is not None and fire.cancelled,
            dropped=fire.dropped if fire is not None and definition.overlap == "buffer_all" else 0,
        )

    @staticmethod
    def _log_error(definition: TriggerDefinition, lease: PollLease, error: str, exc: BaseException) -> None:
        count = lease.consecutive_errors + 1
        if lease.consecutive_errors == 0:
            logger.error("%s: poll failed: %s", definition.name, error, exc_info=exc)
        else:
            logger.warning("%s: poll failed (%d in a row): %s", definition.name, count, error)
