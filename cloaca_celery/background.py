"""Store writes that must not hold up the work they record.

A workflow's first step should start the moment its message arrives, not after
the store has recorded that it started. ``defer(fn)`` runs ``fn`` on one daemon
thread per process, in order; a failure is logged on one line. A process that
is killed first loses the write, which is why only what the sweep can
reconstruct (``running_at``, a step's end) goes this way. A process that is
told to exit (a pool process sent SIGTERM by a ``revoke(terminate=True)``
raises ``SystemExit`` in its task) first waits for the writes it has
deferred (:meth:`Deferred.drain`): the end of a step can start the next fire
of its work, and a fire cut between its store row and its message would wait
for the sweep's ``cloaca_queued_timeout``.
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

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every write deferred so far by this process ran."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                return True  # nothing deferred in this process (a fork's copy holds its parent's)
        done = threading.Event()
        self.defer(done.set, "drain")
        return done.wait(timeout)

    def _run(self) -> None:
        pending = self._queue
        while True:
            work, what = pending.get()
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - history only: the work itself went on
                logger.warning("%s: not recorded: %s", what, one_line(exc))


deferred = Deferred()


class _UntilEnd:
    """A deferred write that is dropped if the task it describes has ended first."""

    __slots__ = ("ended", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ended = False


_until_end: dict[str, _UntilEnd] = {}


def defer_until_end(task_id: str, work: Callable[[], object], what: str) -> None:
    """``defer(work)``, unless task ``task_id`` ends (see :func:`task_ends`) before it runs.

    For a write that would be wrong after the task's end, such as a STARTED
    state written after Celery stored the task's SUCCESS.
    """
    guard = _UntilEnd()
    _until_end[task_id] = guard

    def guarded() -> None:
        with guard.lock:
            if not guard.ended:
                work()

    deferred.defer(guarded, what)


def task_ends(task_id: str) -> None:
    """Task ``task_id`` is ending: drop its pending write, or wait while it is being made."""
    guard = _until_end.pop(task_id, None)
    if guard is not None:
        with guard.lock:
            guard.ended = True
