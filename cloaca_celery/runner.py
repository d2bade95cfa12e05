"""``DefaultRunner``: manage triggers and their history, and run a workflow and wait.

The management half works on the store alone (any process, no worker
needed): list and switch triggers, read history, prune it. ``execute`` runs a
workflow: through ``app``'s workers when an app is given, otherwise eagerly in
this process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from celery.canvas import Signature

from .context import Context, check_json_value, merge_contexts
from .durations import Duration, parse_duration
from .errors import UnknownTriggerError
from .sqlstore import SqlStore
from .store import Store
from .triggers import triggers
from .workflows import workflows


class DefaultRunner:
    """``DefaultRunner(database_url, app=None)``.

    ``database_url`` is a cloaca-style URL (``sqlite://workflows.db``,
    ``sqlite://:memory:``) or a SQLAlchemy URL (``postgresql://...``,
    ``mysql+pymysql://...``). The schema is created or upgraded on first use.
    Triggers defined in this process get their schedule rows at once, so a
    script can list and switch them before any worker has started.
    """

    def __init__(self, database_url: str | None = None, app: Celery | None = None, *,
                 store: Store | None = None) -> None:
        if store is None:
            if database_url is None:
                raise TypeError("DefaultRunner needs a database_url (or store=...)")
            store = SqlStore(database_url)
        self.store = store
        self.app = app
        self.store.ensure_schema()
        if len(triggers):
            self.store.sync_triggers([d.spec() for d in triggers], time.time(), prune=False)

    # -- triggers ----------------------------------------------------------

    def list_trigger_schedules(self) -> list[dict[str, Any]]:
        """Every trigger's schedule, by name."""
        return self.store.list_schedules()

    def get_trigger_schedule(self, name: str) -> dict[str, Any]:
        """One trigger's schedule; ``KeyError`` naming it if unknown."""
        with _unknown_trigger_hint():
            return self.store.get_schedule(name)

    def set_trigger_enabled(
        self, name: str, enabled: bool, *, note: str | None = None, by: str | None = None
    ) -> None:
        """Switch a trigger on or off; it takes effect at its next poll, with no restart.

        Disabling records when, and ``by`` whom and why (``note``) if given
        (the schedule's ``paused_at``, ``paused_by``, ``pause_note``); enabling clears them.
        """
        with _unknown_trigger_hint():
            self.store.set_enabled(name, enabled, note=note, by=by)

    def get_trigger_execution_history(
        self, name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """The trigger's executions, newest first; ``KeyError`` if the trigger is unknown."""
        self.get_trigger_schedule(name)
        return self.store.execution_history(name, limit=limit, offset=offset, status=status)

    def prune_history(self, older_than: Duration) -> int:
        """Delete ended executions completed more than ``older_than`` ago; return how many.

        The health counts of the minutes before then go too."""
        seconds = parse_duration(older_than, "prune_history(older_than)")
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        deleted = self.store.prune_executions(cutoff)
        self.store.prune_health(cutoff)
        return deleted

    # -- running a workflow --------------------------------------------------

    def execute(self, workflow: str, context: Context | dict[str, Any] | None = None,
                timeout: float | None = 300.0) -> dict[str, Any]:
        """Run ``workflow`` with ``context`` and wait for it.

        Returns ``{"execution_id", "workflow", "status", "context", "error"}``
        where ``status`` is ``succeeded`` or ``failed`` and ``context`` is the
        final context (the last step's result). Not written to trigger history.
        """
        definition = workflows.get(workflow)
        data: dict[str, Any] = (
            context.to_dict() if isinstance(context, Context)
            else check_json_value(dict(context or {}), f"execute({workflow!r}): context")
        )
        execution_id = str(uuid.uuid4())
        data.setdefault("execution_id", execution_id)
        app = self.app if self.app is not None else _eager_app()
        canvas: Signature = definition.build_canvas(app, data)
        outcome: dict[str, Any] = {
            "execution_id": execution_id, "workflow": workflow,
            "status": "succeeded", "context": None, "error": None,
        }
        try:
            if self.app is None or self.app.conf.task_always_eager:
                result = canvas.apply().get(disable_sync_subtasks=False)
            else:
                result = canvas.apply_async().get(timeout=timeout, disable_sync_subtasks=False)
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return outcome
        outcome["context"] = merge_contexts(result, f"workflow {workflow!r}") if isinstance(
            result, (list, dict)) else result
        return outcome


@contextmanager
def _unknown_trigger_hint() -> Iterator[None]:
    """An unknown trigger's ``KeyError`` also says where the known names are."""
    try:
        yield
    except UnknownTriggerError as exc:
        raise UnknownTriggerError(
            f"{exc} (list_trigger_schedules() gives the triggers it has)"
        ) from None


_EAGER: Celery | None = None


def _eager_app() -> Celery:
    global _EAGER
    if _EAGER is None:
        _EAGER = Celery("cloaca-runner", set_as_current=False)
        _EAGER.conf.update(task_always_eager=True, task_eager_propagates=True)
    return _EAGER

