"""Heartbeats: the executions whose steps run in this process keep their leases alive.

A running step holds its execution's lease (``deadline_at`` in the store).
One daemon thread per process renews, every ``cloaca_heartbeat_interval``,
the leases of all the executions that have a step running in the process, in
one store statement whatever the number of steps. It runs beside the step on
every pool (prefork children, threads, solo), so a step that computes for an
hour keeps its lease; a killed process stops renewing, and after
``cloaca_heartbeat_misses`` missed renewals the sweep may end the execution.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection

from .logs import log_throttled, one_line

logger = logging.getLogger("cloaca_celery.leases")


class LeaseKeeper:
    """Renews the leases of the executions with a step running in this process."""

    def __init__(
        self, renew: Callable[[Collection[str], float], Collection[str]], now: Callable[[], float],
        interval: float, misses: int,
    ) -> None:
        self._renew = renew
        self._now = now
        self.interval = interval
        self.ttl = interval * misses
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._reported: set[str] = set()

    def lease_until(self) -> float:
        """The end of a lease taken or renewed now (store clock)."""
        return self._now() + self.ttl

    def hold(self, execution_id: str) -> None:
        """A step of ``execution_id`` started here: renew its lease until :meth:`release`."""
        with self._lock:
            self._running[execution_id] = self._running.get(execution_id, 0) + 1
            self._ensure_thread()

    def release(self, execution_id: str) -> None:
        with self._lock:
            left = self._running.get(execution_id, 0) - 1
            if left > 0:
                self._running[execution_id] = left
            else:
                self._running.pop(execution_id, None)

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def renew_now(self) -> None:
        """Renew every held lease once (the thread's work; tests call it directly)."""
        ids = self.running()
        if not ids:
            return
        try:
            gone = set(self._renew(ids, self.lease_until()))
        except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease has misses to spare
            log_throttled(logger, "lease-renew", logging.WARNING,
                          "heartbeat: leases of %d execution(s) not renewed: %s", len(ids), one_line(exc))
            return
        for execution_id in gone - self._reported:
            self._reported.add(execution_id)
            logger.error(
                "execution %s ended while a step of it still runs in this process (pid %d): its "
                "lease was not renewed in time (was this process stopped or starved for longer than "
                "%gs?)", execution_id, os.getpid(), self.ttl,
            )

    def _ensure_thread(self) -> None:
        # A forked pool child inherits the object but not its thread.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloaca-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wake = self._wake
        while True:
            wake.wait(self.interval)
            self.renew_now()
