"""The lease watchdog: a scheduled poll that runs long takes its lease before the next slot.

A scheduled poll starts without writing anything: its slot keeps every other
scheduled poll of the trigger away until the next slot is due. Only when it is
still running shortly before that does it need to say so in the store. One
thread per process keeps the deadlines of the polls running in it and, at a
poll's deadline, writes the lease (``Store.extend_poll_lease``) on its behalf.
Most polls end long before their deadline and never cost that write.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("cloaca_celery.watchdog")


class LeaseWatch:
    """One poll's deadline. ``cancel()`` when the poll ends says whether the lease was taken."""

    def __init__(self, deadline: float, take: Callable[[], bool], label: str) -> None:
        self.deadline = deadline
        self.label = label
        self._take = take
        self._lock = threading.Lock()
        self._ended = False
        self._taken = False

    def fire(self) -> None:
        """Take the lease if the poll is still running (called by the watchdog thread)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            try:
                self._taken = self._take()
            except Exception as exc:  # noqa: BLE001 - the poll goes on; the next slot may overlap it
                logger.warning("%s: poll still running at its deadline; its lease could not be "
                               "written: %s: %s", self.label, type(exc).__name__, exc)
                return
            if not self._taken:
                logger.warning("%s: poll still running at its deadline, and another poll holds "
                               "the trigger", self.label)

    def cancel(self) -> bool:
        """The poll ended: stop watching. ``True`` if the lease was taken (it must be released)."""
        with self._lock:
            self._ended = True
            return self._taken


class Watchdog:
    """A daemon thread that fires :class:`LeaseWatch` deadlines, in deadline order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, LeaseWatch]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, deadline: float, take: Callable[[], bool], label: str) -> LeaseWatch:
        item = LeaseWatch(deadline, take, label)
        with self._wake:
            self._ensure_thread()
            heapq.heappush(self._heap, (deadline, next(self._order), item))
            if self._heap[0][2] is item:
                self._wake.notify()
        return item

    def _ensure_thread(self) -> None:
        # A forked pool child inherits the parent's object but not its thread. The thread never
        # ends by itself (``LeaseWatch.fire`` catches what it raises).
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="cloaca-lease-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap:
                    self._wake.wait()
                deadline, _, item = self._heap[0]
                wait = deadline - time.time()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
            item.fire()


watchdog = Watchdog()
