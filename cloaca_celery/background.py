"""Store writes that must not hold up the work they record.

A workflow's first step should start the moment its message arrives, not after
the store has recorded that it started. ``defer(fn)`` runs ``fn`` on one daemon
thread per process, in order; a failure is logged on one line. A process that
dies first loses the write, which is why only history that the sweep can
reconstruct (``running_at``) goes this way.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from .logs import one_line

logger = logging.getLogger("cloaca_celery.background")


class Deferred:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def defer(self, work: Callable[[], object], what: str) -> None:
        with self._lock:
            # A forked pool child inherits the object but not the thread (nor its queue's waiters).
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._queue = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="cloaca-deferred", daemon=True)
                self._thread.start()
            self._queue.put((work, what))

    def _run(self) -> None:
        pending = self._queue
        while True:
            work, what = pending.get()
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - history only: the work itself went on
                logger.warning("%s: not recorded: %s", what, one_line(exc))


deferred = Deferred()
