"""``install(app)``: bind the registered triggers and workflows to a Celery app.

It registers cloaca's own tasks (:mod:`cloaca_celery.builtin_tasks`), adds
the two beat entries (the dispatch tick and the sweep), applies the embedded
default (broker and results in a local folder) when no broker is configured,
connects the signals that follow workflow steps (:mod:`cloaca_celery.steps`)
and, at worker and beat start-up, checks that every trigger names a
registered workflow and that JSON is the serializer. Everything that reads
settings happens lazily, after Celery has loaded its configuration.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from celery import Celery, signals

from . import builtin_tasks, steps
from .binding import bind, runtime_of
from .builtin_tasks import DISPATCH_TASK, NOT_STEPS, SWEEP_TASK
from .clock import StoreClock
from .compat import upstream_problems_of
from .counters import HealthCounter
from .dispatch import EXPIRY_ALLOWANCE, DispatchSchedule, auto_dispatch_interval
from .embedded import apply_embedded_defaults
from .errors import ConfigurationError
from .leases import LeaseKeeper
from .logs import one_line, quiet_plumbing_logs
from .polling import Poller
from .settings import RETIRED, Settings, check_option_names, resolve_settings
from .sqlstore import SqlStore
from .store import Store
from .triggers import HOW_TRIGGERS_ARE_FOUND, triggers
from .workflows import workflows

logger = logging.getLogger("cloaca_celery.installation")

UNSAFE_CONTENT = ("pickle", "application/x-python-serialize", "yaml", "application/x-yaml")


class Installation:
    """cloaca's state for one Celery app in one process: settings, store, poller."""

    def __init__(self, app: Celery, options: dict[str, Any]) -> None:
        self.app = app
        self.options = options
        self._settings: Settings | None = None
        self._store: Store | None = None
        self._clock: StoreClock | None = None
        self._leases: LeaseKeeper | None = None
        self._health: HealthCounter | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    # -- lazily resolved parts ---------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = resolve_settings(self.app.conf, self.options)
        return self._settings

    @property
    def store(self) -> Store:
        """The store, opened on first use; after a fork, its inherited connections are dropped."""
        with self._lock:
            if self._store is not None and self._pid != os.getpid():
                self._store.dispose()
                self._pid = os.getpid()
            if self._store is None:
                store = make_store(self.settings)
                store.ensure_schema()
                self._store = store
            return self._store

    @property
    def clock(self) -> StoreClock:
        """The store's clock as this process reads it (see :mod:`cloaca_celery.clock`)."""
        with self._lock:
            if self._clock is None:
                self._clock = StoreClock(lambda: self.store.now())
            return self._clock

    @property
    def leases(self) -> LeaseKeeper:
        """The heartbeat of the executions with a step running in this process."""
        with self._lock:
            if self._leases is None:
                settings = self.settings
                self._leases = LeaseKeeper(
                    lambda ids, until: self.store.renew_leases(ids, until), self.clock.now,
                    settings.heartbeat_interval, settings.heartbeat_misses,
                )
            return self._leases

    @property
    def health(self) -> HealthCounter:
        """This process's health counts, written to the store every ``cloaca_health_flush_interval``."""
        with self._lock:
            if self._health is None:
                self._health = HealthCounter(
                    lambda process, rows: self.store.save_health(process, rows), self.clock.now,
                    self.settings.health_flush_interval,
                )
            return self._health

    def flush_health(self) -> None:
        """Write this process's last counts (at shutdown): what was counted is not lost."""
        with self._lock:
            health = self._health
        if health is not None:
            health.stop()

    def poller(self) -> Poller:
        return builtin_tasks.poller(self.app, self)

    def after_end(self, execution_id: str, trigger_name: str, work: str | None = None) -> None:
        """An execution ended: start the next pending fire of its work, if its trigger keeps any.

        A failure here is logged; the sweep starts any pending fire whose work is free.
        """
        try:
            builtin_tasks.firer(self.app, self).after_end(execution_id, trigger_name, work)
        except Exception as exc:  # noqa: BLE001 - the sweep starts it later
            logger.warning("%s: the pending fire after execution %s was not started (%s); the sweep will",
                           trigger_name, execution_id, one_line(exc))

    def dispatch_interval(self) -> float:
        return self.settings.dispatch_interval or auto_dispatch_interval()

    # -- start-up ------------------------------------------------------------

    def configure(self, conf: Any) -> None:
        """Apply the embedded default and add the dispatch beat entry."""
        settings = self.settings
        if settings.embedded:
            apply_embedded_defaults(conf, settings.home)
        tick = DispatchSchedule(self.dispatch_interval, app=self.app)
        queue = {"queue": settings.dispatch_queue} if settings.dispatch_queue else {}
        beat_schedule = dict(conf.beat_schedule or {})
        beat_schedule[DISPATCH_TASK] = {
            "task": DISPATCH_TASK,
            "schedule": tick,
            # Celery judges expires on the receiving worker's clock against beat's: a generous
            # bound that only keeps a long backlog of ticks from piling up (see dispatch.EXPIRY_ALLOWANCE).
            "options": {"expires": EXPIRY_ALLOWANCE, **queue},
        }
        beat_schedule[SWEEP_TASK] = {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval,
            "options": {"expires": max(settings.sweep_interval, EXPIRY_ALLOWANCE), **queue},
        }
        conf.beat_schedule = beat_schedule

    def check(self) -> list[str]:
        """Every problem that must stop worker or beat start-up, as messages."""
        problems: list[str] = []
        for definition in triggers:
            if definition.workflow not in workflows:
                problems.append(
                    f"trigger {definition.name!r} (in {definition.origin}) names workflow "
                    f"{definition.workflow!r}, which is not registered; registered workflows: "
                    f"{workflows.describe_names()}. Define it with WorkflowBuilder or "
                    "register_workflow() in a module the app imports"
                )
        conf = self.app.conf
        for key in ("task_serializer", "result_serializer"):
            value = conf.get(key)
            if value not in (None, "json"):
                problems.append(
                    f"Celery setting {key}={value!r}: cloaca only uses JSON; set {key}='json'"
                )
        for key in ("accept_content", "result_accept_content"):
            accept = conf.get(key) or ["json"]
            unsafe = [c for c in accept if c in UNSAFE_CONTENT]
            if unsafe:
                problems.append(
                    f"Celery setting {key}={list(accept)!r} accepts {', '.join(unsafe)}; "
                    f"cloaca refuses unsafe serializers: set {key}=['json']"
                )
        return problems

    def start(self, role: str) -> None:
        """Check the setup and create or refresh the schedule rows.

        A failed check logs one critical line per problem and exits, so a
        misconfigured worker or beat never starts polling.
        """
        self.app.loader.import_default_modules()
        try:
            problems = self.check()
            _ = self.settings
        except ConfigurationError as exc:
            problems = [str(exc)]
        if problems:
            for problem in problems:
                logger.critical("cloaca: %s", problem)
            raise SystemExit(f"cloaca: {role} not started: " + "; ".join(problems))
        store = self.store
        # Workers run the polls, so their trigger list is the one that counts:
        # only a worker marks vanished triggers unregistered. Beat just adds rows.
        self.clock.check(role)
        for name in self.settings.retired:
            logger.warning("cloaca: setting cloaca_%s is no longer used and is ignored: %s; remove it",
                           name, RETIRED[name])
        specs = [d.spec() for d in triggers]
        store.sync_triggers(specs, self.clock.now(), prune=role == "worker", spread=True)
        # Close before the pool (and an embedded beat) fork: a SQLite connection
        # must never be inherited by a child process.
        store.close()

    def announce(self, role: str) -> None:
        """The one start-up line: what was loaded, and from where (after Celery set up logging)."""
        if not len(triggers):
            logger.warning("cloaca: %s ready, but no triggers were found (store %s). %s",
                           role, self.store.url, HOW_TRIGGERS_ARE_FOUND)
            return
        logger.info(
            "cloaca: %s ready: %d trigger(s), %d workflow(s), store %s, dispatch every %gs",
            role, len(triggers), len(workflows), self.store.url, self.dispatch_interval(),
        )

    def after_fork(self) -> None:
        """In a new pool process: drop inherited connections (``store`` does), then open one
        so the first poll does not pay for it. Heartbeats start afresh: the parent's are its own."""
        with self._lock:
            self._leases = None
            self._health = None
        try:
            self.store.ping()
        except Exception as exc:  # noqa: BLE001 - the first poll will report it properly
            logger.warning("cloaca: store not reachable from a new worker process: %s", exc)


def make_store(settings: Settings) -> Store:
    """The store the settings ask for.

    ``store='auto'`` (the default) picks the Django ORM store when
    ``django_cloaca`` is an installed, ready Django app and no
    ``cloaca_database_url`` was given; the SQLAlchemy store otherwise.
    """
    kind = settings.store
    if kind == "auto":
        kind = "django" if not settings.database_url_given and _django_cloaca_ready() else "sql"
    if kind == "django":
        if not _django_cloaca_ready():
            raise ConfigurationError(
                "setting cloaca_store='django' needs Django set up with 'django_cloaca' in "
                "INSTALLED_APPS (run Celery with DJANGO_SETTINGS_MODULE set)"
            )
        from django_cloaca.store import DjangoStore

        django_store: Store = DjangoStore()
        return django_store
    return SqlStore(settings.database_url)


def _django_cloaca_ready() -> bool:
    if "django" not in sys.modules:
        return False
    try:
        from django.apps import apps
    except ImportError:
        return False
    return bool(apps.ready and apps.is_installed("django_cloaca"))


def installed_on(app: Any) -> Installation | None:
    """The installation of ``app``, or ``None`` if cloaca is not installed on it."""
    runtime = runtime_of(app)
    return runtime if isinstance(runtime, Installation) else None


def get_installation(app: Celery) -> Installation:
    """The installation of ``app``; ``ConfigurationError`` if install() was not called."""
    installation = installed_on(app)
    if installation is None:
        raise ConfigurationError(
            f"cloaca is not installed on Celery app {app.main!r}; call cloaca_celery.install(app)"
        )
    return installation


def install(app: Celery, **options: Any) -> Installation:
    """Bind the registered triggers and workflows to ``app``.

    ``options`` are the ``cloaca_`` settings without their prefix (see
    ``docs/configuration.md``); they may also come from ``app.conf``.
    Calling it twice on one app returns the first installation.
    """
    if not isinstance(app, Celery):
        raise ConfigurationError(f"install() takes a Celery app, not {type(app).__name__}")
    check_option_names(options)
    existing = installed_on(app)
    if existing is not None:
        if options and options != existing.options:
            raise ConfigurationError(
                f"cloaca is already installed on app {app.main!r} with other options"
            )
        return existing
    installation = Installation(app, dict(options))
    bind(app, installation)
    # Celery's autodiscover_tasks() imports each Django app's tasks.py; triggers.py is found
    # the same way, whenever the app imports its modules (worker, beat, the CLI).
    app.autodiscover_tasks(related_name="triggers")
    quiet_plumbing_logs()
    builtin_tasks.register(app, installation)
    steps.connect(app, skip=NOT_STEPS)

    def on_after_configure(sender: Celery, source: Any, **_: Any) -> None:
        installation.configure(source)

    app.on_after_configure.connect(on_after_configure, weak=False)
    if app.configured:
        installation.configure(app.conf)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            installation.start("worker")

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            installation.announce("worker")
            for problem in upstream_problems_of(app):
                logger.warning("cloaca: %s", problem)

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            installation.start("beat")
            installation.announce("beat")

    def on_process_init(**_: Any) -> None:
        installation.after_fork()

    def on_shutdown(**_: Any) -> None:
        installation.flush_health()

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.beat_init.connect(on_beat_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_shutdown, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    return installation
