"""``install(app)``: bind the registered triggers and workflows to a Celery app.

It registers the ``cloaca.dispatch``, ``cloaca.poll``, ``cloaca.complete`` and
``cloaca.failed`` tasks, adds the one beat entry that drives polling, applies
the embedded default (broker and results in a local folder) when no broker is
configured, and checks at worker and beat start-up that every trigger names
a registered workflow and that JSON is the serializer. Everything that reads
settings happens lazily, after Celery has loaded its configuration.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import Any

from celery import Celery, signals, states

from .background import defer_until_end, deferred, task_ends
from .dispatch import DISPATCH_TASK, POLL_TASK, DispatchSchedule, auto_dispatch_interval, dispatch_due
from .embedded import apply_embedded_defaults
from .errors import ConfigurationError
from .logs import quiet_plumbing_logs
from .polling import COMPLETE_TASK, FAILED_TASK, Poller, spec_of
from .registry import sweep
from .settings import Settings, check_option_names, resolve_settings
from .sqlstore import SqlStore
from .store import Store
from .triggers import HOW_TRIGGERS_ARE_FOUND, triggers
from .workflows import merge_contexts, workflows

logger = logging.getLogger("cloaca_celery.installation")

SWEEP_TASK = "cloaca.sweep"

_installed: weakref.WeakKeyDictionary[Celery, Installation] = weakref.WeakKeyDictionary()


class Installation:
    """cloaca's state for one Celery app in one process: settings, store, poller."""

    def __init__(self, app: Celery, options: dict[str, Any]) -> None:
        self.app = app
        self.options = options
        self._settings: Settings | None = None
        self._store: Store | None = None
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
        with self._lock:
            if self._store is not None and self._pid != os.getpid():
                dispose = getattr(self._store, "dispose", None)
                if callable(dispose):
                    dispose()
                self._pid = os.getpid()
            if self._store is None:
                store = make_store(self.settings)
                store.ensure_schema()
                self._store = store
            return self._store

    def use_store(self, store: Store) -> None:
        """Replace the store (the Django app and tests use this)."""
        with self._lock:
            self._store = store

    def poller(self) -> Poller:
        return Poller(self.app, self.settings, self.store)

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
            "options": {"expires": 2.0, **queue},
        }
        beat_schedule[SWEEP_TASK] = {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval,
            "options": {"expires": settings.sweep_interval, **queue},
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
        accept = conf.get("accept_content") or ["json"]
        unsafe = [c for c in accept if c in ("pickle", "application/x-python-serialize", "yaml")]
        if unsafe:
            problems.append(
                f"Celery setting accept_content={list(accept)!r} accepts {', '.join(unsafe)}; "
                "cloaca refuses unsafe serializers: set accept_content=['json']"
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
        store.sync_triggers([spec_of(d) for d in triggers], time.time(), prune=role == "worker", spread=True)
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
        """In a new pool process: drop inherited connections, then open one so the
        first poll does not pay for it."""
        with self._lock:
            if self._store is not None and self._pid != os.getpid():
                dispose = getattr(self._store, "dispose", None)
                if callable(dispose):
                    dispose()
                self._pid = os.getpid()
        try:
            ping = getattr(self.store, "ping", None)
            if callable(ping):
                ping()
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
    import sys

    if "django" not in sys.modules:
        return False
    try:
        from django.apps import apps
    except ImportError:
        return False
    return bool(apps.ready and apps.is_installed("django_cloaca"))


def installed_on(app: Any) -> Installation | None:
    """The installation of ``app``, or ``None`` if cloaca is not installed on it."""
    try:
        return _installed.get(app)
    except TypeError:
        return None


def get_installation(app: Celery) -> Installation:
    """The installation of ``app``; ``ConfigurationError`` if install() was not called."""
    try:
        return _installed[app]
    except KeyError:
        raise ConfigurationError(
            f"cloaca is not installed on Celery app {app.main!r}; call cloaca_celery.install(app)"
        ) from None


def install(app: Celery, **options: Any) -> Installation:
    """Bind the registered triggers and workflows to ``app``.

    ``options`` are the ``cloaca_`` settings without their prefix (see
    ``docs/configuration.md``); they may also come from ``app.conf``.
    Calling it twice on one app returns the first installation.
    """
    if not isinstance(app, Celery):
        raise ConfigurationError(f"install() takes a Celery app, not {type(app).__name__}")
    check_option_names(options)
    existing = _installed.get(app)
    if existing is not None:
        if options and options != existing.options:
            raise ConfigurationError(
                f"cloaca is already installed on app {app.main!r} with other options"
            )
        return existing
    installation = Installation(app, dict(options))
    _installed[app] = installation
    # Celery's autodiscover_tasks() imports each Django app's tasks.py; triggers.py is found
    # the same way, whenever the app imports its modules (worker, beat, the CLI).
    app.autodiscover_tasks(related_name="triggers")
    quiet_plumbing_logs()
    _register_tasks(app, installation)

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

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            installation.start("beat")
            installation.announce("beat")

    def on_process_init(**_: Any) -> None:
        installation.after_fork()

    def on_task_prerun(task_id: str = "", task: Any = None, args: Any = (), **_: Any) -> None:
        if getattr(task, "app", None) is not app:
            return
        request = getattr(task, "request", None)
        eager = bool(getattr(request, "is_eager", False))
        if getattr(task, "cloaca_track_started", False) and not eager and task_id:
            _record_started(task, task_id, request)
        execution_id = _execution_of(args)
        if execution_id is None:
            return
        if getattr(task, "name", None) in (COMPLETE_TASK, FAILED_TASK):
            return  # the workflow's own steps are over: nothing starts running here
        # Recorded beside the step, not before it: the step does not wait for the store.
        at = datetime.now(timezone.utc)
        if eager:
            # Run in the caller's thread (tests, DefaultRunner): no write behind its back.
            installation.store.mark_running(execution_id, at)
            return
        deferred.defer(lambda: installation.store.mark_running(execution_id, at),
                       f"execution {execution_id}: start of its step")

    def on_task_revoked(request: Any = None, sender: Any = None, **_: Any) -> None:
        execution_id = _execution_of(getattr(request, "args", None))
        if execution_id is None or getattr(sender, "app", app) is not app:
            return
        installation.store.finish_execution(
            execution_id, "revoked", f"task {getattr(request, 'id', '?')} was revoked",
            datetime.now(timezone.utc),
        )

    def on_task_postrun(task_id: str = "", **_: Any) -> None:
        task_ends(task_id)  # normally done by the step itself; this covers a step that never ran

    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.task_revoked.connect(on_task_revoked, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.beat_init.connect(on_beat_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    return installation


def _record_started(task: Any, task_id: str, request: Any) -> None:
    """Store a step's STARTED state (what Celery's ``track_started`` stores) beside the step.

    Celery writes it before the task runs, a result-backend round trip on
    the way to the step's first line; cloaca's steps write it on the
    background thread instead, and not at all if the step has ended first.
    """
    meta = {"pid": os.getpid(), "hostname": getattr(request, "hostname", None) or socket.gethostname()}

    def store() -> None:
        task.backend.store_result(task_id, meta, states.STARTED, request=request)

    defer_until_end(task_id, store, f"task {task_id}: its STARTED state")


def _register_tasks(app: Celery, installation: Installation) -> None:
    @app.task(name=POLL_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def poll(
        trigger_name: str, scheduled: bool = False, due: float | None = None,
        next_due: float | None = None, hold_by: float | None = None, errors: int | None = None,
        start_by: float | None = None,
    ) -> dict[str, Any] | None:
        """Poll one trigger once (beat's dispatcher, the CLI and the admin all send this).

        The dispatcher's polls carry their slot: ``due`` (when it was due, for
        the record), ``next_due`` (when the next one is), ``hold_by`` (the
        latest it may run without a lease), ``start_by`` (the latest it may
        start at all) and the row's error count. They
        return nothing (nobody reads it, and Celery would format it); manual
        polls return their report.
        """
        poller = installation.poller()
        if not scheduled:
            return poller.poll(trigger_name).as_dict()
        poller.poll(
            trigger_name, scheduled=True,
            next_due=None if next_due is None else float(next_due),
            hold_by=None if hold_by is None else float(hold_by),
            errors=None if errors is None else int(errors),
            start_by=None if start_by is None else float(start_by),
        )
        return None

    @app.task(name=DISPATCH_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def dispatch() -> int:
        """Publish a ``cloaca.poll`` for every due trigger."""
        return dispatch_due(app, installation.settings, installation.store)

    @app.task(name=SWEEP_TASK, shared=False, ignore_result=True, acks_late=False, serializer="json")
    def sweep_task() -> int:
        """End executions whose end was never reported (see :mod:`cloaca_celery.registry`)."""
        return sweep(app, installation.settings, installation.store)

    # Recording the end retries through a store outage: 1, 2, 4 ... 60 s apart, for about 15 minutes.
    @app.task(
        name=COMPLETE_TASK, shared=False, ignore_result=False, serializer="json",
        autoretry_for=(Exception,), max_retries=20, retry_backoff=1, retry_backoff_max=60,
        retry_jitter=False,
    )
    def complete(result: Any = None, *, execution: dict[str, Any]) -> Any:
        """The last step of every fired workflow: records its success and releases the claim."""
        installation.store.finish_execution(
            execution["execution_id"], "succeeded", None, datetime.now(timezone.utc)
        )
        logger.info(
            "%s: workflow %r execution %s succeeded",
            execution.get("trigger_name"), execution.get("workflow"), execution.get("execution_id"),
        )
        if isinstance(result, list):
            return merge_contexts(result, f"workflow {execution.get('workflow')!r}")
        return result

    @app.task(
        name=FAILED_TASK, shared=False, ignore_result=True, serializer="json",
        autoretry_for=(Exception,), max_retries=20, retry_backoff=1, retry_backoff_max=60,
        retry_jitter=False,
    )
    def failed(failed_task_id: str | None = None, *, execution: dict[str, Any]) -> None:
        """Linked as the error callback of every step: records the failure and releases the claim."""
        error = f"task {failed_task_id} failed"
        if failed_task_id:
            try:
                outcome = app.AsyncResult(failed_task_id).result
            except Exception:  # noqa: BLE001 - the failure is recorded even if its text is not
                outcome = None
            if outcome is not None:
                error = f"task {failed_task_id} failed: {type(outcome).__name__}: {outcome}"
        if installation.store.finish_execution(
            execution["execution_id"], "failed", error, datetime.now(timezone.utc)
        ):
            logger.warning(
                "%s: workflow %r execution %s failed: %s",
                execution.get("trigger_name"), execution.get("workflow"),
                execution.get("execution_id"), error,
            )


def _execution_of(args: Any) -> str | None:
    """The execution id carried by a step's first argument (its context), if any."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):
        value = first.get("execution_id")
        if isinstance(value, str) and "trigger_name" in first:
            return value
    return None
