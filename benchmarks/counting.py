"""Counting inside worker and beat processes without distorting what is counted.

Every worker pool process keeps its counts in memory and sends them to Redis in one
pipeline every ``flush_every`` operations, and at least every
``FLUSH_PERIOD`` seconds from a daemon thread (so the last few counts of a
run arrive too). Both sides of a ratio pay exactly the same: one dict update
per task, one Redis round trip per ``flush_every`` tasks.

Keys (all in the benchmark's private Redis database):

* ``bench:done:<task name>`` - tasks finished (``task_postrun``);
* ``bench:expired:<task name>`` - tasks a worker discarded unrun because they expired;
* ``bench:dispatched`` - polls sent by ``cloaca.dispatch`` tasks;
* ``bench:sql:write`` / ``bench:sql:all`` - SQL statements sent by this
  process's SQLAlchemy engines (INSERT/UPDATE/DELETE, and all of them);
* ``bench:sql:rows`` - rows those INSERT/UPDATE/DELETE statements wrote (driver rowcount);
* ``bench:polls`` - a hash: scale-mode trigger evaluations per whole second;
* ``bench:late`` - a list of ``"<start> <lateness> <trigger>"`` for scale-mode
  polls (lateness ``-`` when the poll carries no ``due``).
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - imported before any fork, never in a child's DNS lookup
import os
import threading
import time
from collections import defaultdict
from typing import Any

FLUSH_PERIOD = 0.1
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")


class Tally:
    """Per-process counters, hash counters and lists, flushed to Redis in batches.

    Batching (and the flusher thread) is switched on by :meth:`batch_here`,
    which the benchmark app calls in each pool process after the fork and in
    a worker's main process once its pool has started. Until then (and in
    beat) every count is sent at once: no thread may run in a process that is
    about to fork, or a child can inherit a lock held by it (the import lock
    during a DNS lookup, for one).
    """

    def __init__(self, redis_url: str, flush_every: int = 50) -> None:
        self.redis_url = redis_url
        self.flush_every = max(1, int(flush_every))
        self._lock = threading.Lock()
        self._pid = -1
        self._batching = False
        self._client: Any = None
        self._reset()

    def _reset(self) -> None:
        self._counts: dict[str, int] = defaultdict(int)
        self._hashes: dict[tuple[str, str], int] = defaultdict(int)
        self._lists: dict[str, list[str]] = defaultdict(list)
        self._ops = 0

    def _ensure_process(self) -> None:
        """After a fork: forget the parent's pending counts, connection and batching."""
        if self._pid == os.getpid():
            return
        import redis

        self._pid = os.getpid()
        self._batching = False
        self._reset()
        self._client = redis.Redis.from_url(self.redis_url)

    def batch_here(self) -> None:
        """Batch counts in this process from now on, with a flusher thread for the last ones."""
        with self._lock:
            self._ensure_process()
            if self._batching:
                return
            self._batching = True
        thread = threading.Thread(target=self._flush_periodically, name="bench-tally", daemon=True)
        thread.start()

    def _add(self) -> bool:
        self._ops += 1
        return self._ops >= self.flush_every or not self._batching

    def incr(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._ensure_process()
            self._counts[key] += amount
            due = self._add()
        if due:
            self.flush()

    def hincr(self, key: str, field: str, amount: int = 1) -> None:
        with self._lock:
            self._ensure_process()
            self._hashes[(key, field)] += amount
            due = self._add()
        if due:
            self.flush()

    def push(self, key: str, value: str) -> None:
        with self._lock:
            self._ensure_process()
            self._lists[key].append(value)
            due = self._add()
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._pid != os.getpid() or not self._ops:
                return
            counts, hashes, lists = self._counts, self._hashes, self._lists
            self._reset()
            client = self._client
        pipe = client.pipeline(transaction=False)
        for key, amount in counts.items():
            pipe.incrby(key, amount)
        for (key, field), amount in hashes.items():
            pipe.hincrby(key, field, amount)
        for key, values in lists.items():
            pipe.rpush(key, *values)
        pipe.execute()

    def _flush_periodically(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(FLUSH_PERIOD)
            with contextlib.suppress(Exception):  # a count lost at shutdown must not kill the process
                self.flush()


def is_write(statement: str) -> bool:
    return statement.lstrip().upper().startswith(WRITE_VERBS)


def count_sql(on_statement: Any) -> None:
    """Call ``on_statement(statement, rowcount)`` for every SQL statement any engine of this process sends.

    A listener on the ``Engine`` class applies to engines created later too,
    so the library's own store engine is counted without touching its code.
    ``rowcount`` is the driver's (rows written by an INSERT, UPDATE or DELETE).
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def after_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        on_statement(statement, getattr(cursor, "rowcount", -1))

    event.listen(Engine, "after_cursor_execute", after_cursor_execute)


class LocalSqlCount:
    """Statements sent by this (runner) process, read directly."""

    def __init__(self) -> None:
        self.writes = 0
        self.rows = 0
        self.all = 0
        count_sql(self._seen)

    def _seen(self, statement: str, rowcount: int) -> None:
        self.all += 1
        if is_write(statement):
            self.writes += 1
            self.rows += max(rowcount, 0)
