"""Which Celery apps cloaca is installed on, and how a task reaches cloaca's state from its app.

``install(app)`` binds a :class:`Runtime` to the app; anything holding a
Celery app (a task through ``task.app``, a signal's sender) finds it here,
the way redbeat keeps its configuration on the app. This module imports no
other part of cloaca that could import it back.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from .clock import StoreClock
from .counters import HealthCounter
from .errors import ConfigurationError
from .leases import LeaseKeeper
from .settings import Settings
from .store import Store


class Runtime(Protocol):
    """cloaca's state for one app in one process (``cloaca_celery.installation.Installation``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> StoreClock: ...

    @property
    def leases(self) -> LeaseKeeper: ...

    @property
    def health(self) -> HealthCounter:
        """This process's health counts (:mod:`cloaca_celery.counters`)."""
        ...

    def after_end(self, execution_id: str, trigger_name: str, work: str | None = None) -> None:
        """An execution ended: start the next pending fire of its work (overlap policies that buffer)."""
        ...


_bound: weakref.WeakKeyDictionary[Any, Runtime] = weakref.WeakKeyDictionary()


def bind(app: Any, runtime: Runtime) -> None:
    _bound[app] = runtime


def runtime_of(app: Any) -> Runtime | None:
    """The runtime bound to ``app``, or ``None`` if cloaca is not installed on it."""
    try:
        return _bound.get(app)
    except TypeError:  # an object that cannot be weakly referenced is no app of ours
        return None


def require_runtime(app: Any) -> Runtime:
    runtime = runtime_of(app)
    if runtime is None:
        raise ConfigurationError(
            f"cloaca is not installed on Celery app {getattr(app, 'main', app)!r}; "
            "call cloaca_celery.install(app)"
        )
    return runtime
