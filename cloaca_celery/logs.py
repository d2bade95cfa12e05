"""Keep Celery's per-message INFO lines about cloaca's own plumbing at DEBUG.

Beat sends ``cloaca.dispatch`` many times a second and workers run a
``cloaca.poll`` per trigger interval; Celery logs each of them at INFO.
These filters lower those records to DEBUG (the project rule: no log line per
skipped poll above DEBUG). They are ordinary ``logging.Filter`` objects on
Celery's loggers; nothing in Celery is patched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

QUIET_TASKS = frozenset({"cloaca.dispatch", "cloaca.poll"})
_LOGGERS = ("celery.beat", "celery.app.trace", "celery.worker.strategy", "celery.worker.request")


class PlumbingFilter(logging.Filter):
    """Demote INFO records that mention a cloaca plumbing task to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not _mentions_plumbing(record.args):
            return True
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _mentions_plumbing(args: object) -> bool:
    if isinstance(args, Mapping):
        return args.get("name") in QUIET_TASKS
    if isinstance(args, tuple):
        return any(isinstance(a, str) and a in QUIET_TASKS for a in args)
    return False


_filter = PlumbingFilter()


def quiet_plumbing_logs() -> None:
    """Install the filter on Celery's loggers (idempotent)."""
    for name in _LOGGERS:
        log = logging.getLogger(name)
        if _filter not in log.filters:
            log.addFilter(_filter)


_last_logged: dict[str, float] = {}
_throttle_lock = threading.Lock()


def log_throttled(log: logging.Logger, key: str, level: int, message: str, *args: object,
                  every: float = 10.0) -> bool:
    """Log ``message`` at most once per ``every`` seconds for ``key`` (one line, no traceback).

    For failures that repeat on every tick (an unreachable store or broker):
    one clear line now and then instead of a traceback storm.
    """
    now = time.monotonic()
    with _throttle_lock:
        if now - _last_logged.get(key, -every) < every:
            return False
        _last_logged[key] = now
    log.log(level, message, *args)
    return True


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: database errors carry the SQL and a link after it."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


_DATABASE_MODULES = ("sqlalchemy.", "django.db", "psycopg", "psycopg2", "pymysql", "MySQLdb", "sqlite3")


def error_text(exc: BaseException) -> str:
    """``Type: message`` for a trigger's history; a database error by its first line only.

    A database driver's message goes on with the SQL statement and its
    parameters (a context, a state): those never reach ``last_error``.
    """
    if any(cls.__module__.startswith(_DATABASE_MODULES) for cls in type(exc).__mro__):
        return one_line(exc)
    return f"{type(exc).__name__}: {exc}"
