"""The store's clock, as every process of a deployment reads it.

Slots, poll and execution leases and the sweep's deadlines are compared by
processes on different hosts; their wall clocks may disagree by seconds. So
every such time is on one clock, the store's: each process measures how far
its own clock is from the database's (one ``SELECT`` of the database's time,
halfway through the round trip) and reads ``time.time() + offset``. The
offset is measured again every few minutes, and a process whose clock is more
than a second off the store's says so at start-up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("cloaca_celery.clock")

REMEASURE_EVERY = 300.0
SKEW_WARNING = 1.0
SAMPLES = 3


class StoreClock:
    """``now()`` on the store's clock: the local clock plus a measured offset."""

    def __init__(self, store_now: Callable[[], float], remeasure_every: float = REMEASURE_EVERY) -> None:
        self._store_now = store_now
        self._every = remeasure_every
        self._offset = 0.0
        self._measured_at: float | None = None  # time.monotonic() of the last measurement
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Seconds to add to this host's clock to read the store's (measured on first use)."""
        self._refresh()
        return self._offset

    def now(self) -> float:
        """The store's time now, epoch seconds."""
        self._refresh()
        return time.time() + self._offset

    def measure(self) -> float:
        """Measure the offset now and return it.

        Of :data:`SAMPLES` round trips to the store, the shortest is kept: the
        first may open the connection, and a round trip's length is the error
        of its reading (processes compare their readings: a dispatch tick's
        wait is beat's reading against a worker's).
        """
        best = (math.inf, 0.0)  # (round trip, offset)
        for _ in range(SAMPLES):
            before = time.time()
            store_time = float(self._store_now())
            after = time.time()
            best = min(best, (after - before, store_time - (before + after) / 2))
        offset = best[1]
        with self._lock:
            self._offset = offset
            self._measured_at = time.monotonic()
        return offset

    def _refresh(self) -> None:
        measured = self._measured_at
        if measured is not None and time.monotonic() - measured < self._every:
            return
        try:
            self.measure()
        except Exception as exc:  # noqa: BLE001 - keep the last offset; the caller's store call reports it
            logger.debug("clock: the store's time could not be read (%s); keeping offset %.3fs",
                         type(exc).__name__, self._offset)
            with self._lock:
                self._measured_at = time.monotonic() - self._every + 5.0  # try again in 5 s

    def check(self, role: str) -> None:
        """Measure, and warn if this host's clock is more than :data:`SKEW_WARNING` off the store's."""
        offset = self.measure()
        if abs(offset) > SKEW_WARNING:
            logger.warning(
                "cloaca: %s's clock is %.1fs %s the store's; cloaca times its polls and leases on the "
                "store's clock, but Celery's own eta and expires use this host's: synchronise it (NTP)",
                role, abs(offset), "behind" if offset > 0 else "ahead of",
            )
