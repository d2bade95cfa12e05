"""The sweep: end the executions whose end was never reported, and prune old history.

A workflow normally reports its own end (``cloaca.complete``,
``cloaca.failed``, the worker's ``task_revoked`` signal). If that report
never comes (a worker was SIGKILLed, a broker lost a message) the sweep ends
the execution, once no step of it can still be running. That question is
answered by leases, never by asking workers: every execution has a deadline
in the store, on the store's clock,

* while a step runs: its lease, renewed by heartbeats
  (``cloaca_heartbeat_interval`` x ``cloaca_heartbeat_misses``);
* while a step waits to retry: its retry time plus the lease;
* while no step runs (its next step waits in the broker): ``cloaca_queued_timeout``.

Only an execution past its deadline is looked at. How it ended comes from the
result backend where the workflow's own report is missing (a failed,
revoked or finished task); otherwise it ends ``lost``. The end is written
only if the deadline has still passed at that moment (a heartbeat that came
meanwhile wins), and frees the claim, so the context can fire again. Every
active execution is reached over time: candidates come in pages, oldest
deadline first.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, states
from celery.backends.base import DisabledBackend

from .clock import StoreClock
from .firing import Firer
from .logs import log_throttled, one_line
from .settings import Settings
from .store import Store

logger = logging.getLogger("cloaca_celery.sweep")

PAGE = 200
PAGES_PER_SWEEP = 10
PRUNE_BATCH = 1000


def verdict(execution: dict[str, Any], metas: dict[str, dict[str, Any]], now: float,
            settings: Settings) -> tuple[str, str | None]:
    """How an execution past its deadline ended: ``(status, error)``.

    ``metas`` are its tasks' result-backend states (empty without a backend).
    """
    final_id = execution["execution_id"]
    for task_id in execution["task_ids"]:
        status = metas.get(task_id, {}).get("status")
        if status == states.FAILURE and task_id != final_id:
            return "failed", f"task {task_id} failed: {metas[task_id].get('result')!r}"
        if status == states.REVOKED:
            return "revoked", f"task {task_id} was revoked"
    final = metas.get(final_id, {}).get("status")
    if final == states.SUCCESS:
        return "succeeded", None
    if final == states.FAILURE:
        return "failed", f"recording the end failed: {metas[final_id].get('result')!r}"
    if execution.get("ending_status"):
        return execution["ending_status"], execution.get("error")
    overdue = now - float(execution["deadline_at"])
    live = [s for s in execution["steps"] if s["state"] in ("running", "waiting")]
    if live:
        step = live[0]
        host = _host(metas.get(step["task_id"], {}))
        doing = "waiting to retry" if step["state"] == "waiting" else "running"
        return "lost", (
            f"step {step['task_id']} was {doing}{host} and its lease ran out {overdue:.0f}s ago "
            f"(no heartbeat for {settings.lease + overdue:.0f}s; settings cloaca_heartbeat_interval, "
            "cloaca_heartbeat_misses): its worker is gone"
        )
    return "lost", (
        f"no step of it ran for {settings.queued_timeout + overdue:.0f}s (setting cloaca_queued_timeout): "
        "its messages were lost, or are still queued and will not run now"
    )


def _host(meta: dict[str, Any]) -> str:
    result = meta.get("result")
    if meta.get("status") == states.STARTED and isinstance(result, dict) and result.get("hostname"):
        return f" on worker {result['hostname']}"
    return ""


def _metas(backend: Any, execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if isinstance(backend, DisabledBackend):
        return {}
    return {task_id: backend.get_task_meta(task_id) for task_id in execution["task_ids"]}


def sweep(app: Celery, settings: Settings, store: Store, clock: StoreClock, firer: Firer) -> int:
    """End the executions past their deadline that nothing can still be running; return how many.

    An ended execution's work may have a pending fire (an overlap policy that
    buffers): it starts. So does any pending fire whose work is free (its
    starter died). Then one batch of history older than
    ``cloaca_history_retention`` is deleted.
    """
    ended = 0
    try:
        now = clock.now()
        after: tuple[float, str] | None = None
        for _ in range(PAGES_PER_SWEEP):
            candidates = store.sweep_candidates(now, PAGE, after)
            for execution in candidates:
                if _end(app, settings, store, clock, execution, now):
                    ended += 1
                    firer.after_end(execution["execution_id"], execution["trigger_name"],
                                    execution.get("dedup_hash"))
            if len(candidates) < PAGE:
                break
            last = candidates[-1]
            after = (float(last["deadline_at"]), last["execution_id"])
        for trigger_name, work in store.orphan_pending(PAGE):
            firer.start_pending(trigger_name, work)
        _prune(settings, store, now)
    except Exception as exc:  # noqa: BLE001 - asked again at the next sweep
        log_throttled(logger, "sweep-store", logging.WARNING,
                      "sweep: the store is unreachable (%s); trying again next sweep", one_line(exc))
    return ended


def _end(app: Celery, settings: Settings, store: Store, clock: StoreClock, execution: dict[str, Any],
         now: float) -> bool:
    try:
        metas = _metas(app.backend, execution)
    except Exception as exc:  # noqa: BLE001 - an unreachable backend is asked again next sweep
        log_throttled(logger, "sweep-backend", logging.WARNING,
                      "sweep: the result backend is unreachable (%s); trying again next sweep", one_line(exc))
        return False
    status, error = verdict(execution, metas, now, settings)
    if not store.end_overdue(execution["execution_id"], status, error, clock.now()):
        return False  # a step renewed its lease meanwhile, or another sweep ended it
    logger.warning(
        "%s: execution %s of workflow %r marked %s by the sweep: %s",
        execution["trigger_name"], execution["execution_id"], execution["workflow"], status,
        error or "its final task succeeded",
    )
    return True


def _prune(settings: Settings, store: Store, now: float) -> None:
    if settings.history_retention is None:
        return
    cutoff = datetime.fromtimestamp(now, tz=timezone.utc) - timedelta(seconds=settings.history_retention)
    deleted = store.prune_executions(cutoff, PRUNE_BATCH, batches=1)
    counts = store.prune_health(cutoff)
    if counts:
        logger.info("sweep: deleted %d health row(s) of minutes before %s (setting cloaca_history_retention)",
                    counts, cutoff.isoformat(timespec="seconds"))
    if deleted:
        logger.info("sweep: deleted %d execution(s) that ended before %s (setting cloaca_history_retention)",
                    deleted, cutoff.isoformat(timespec="seconds"))
