"""The sweep: find executions whose end was never reported, and end them.

A workflow normally reports its own end: ``cloaca.complete`` on success,
``cloaca.failed`` (linked as error callback) on failure, the worker's
``task_revoked`` signal on revoke; each finishes the execution and releases
its claim in one transaction. If that report never comes (the worker was
SIGKILLed, the broker lost a message) the sweep asks the result backend about
every task of the execution:

* a FAILURE or REVOKED task, or a SUCCESS of the final task, ends it;
* a task STARTED that its worker no longer reports as active ends it as ``lost``
  (a dead worker does not answer; one restarted under the same name does not
  list a task of its previous life);
* nothing started or finished for ``claim_grace`` (unknown past the grace
  period) ends it as ``lost``;
* without a result backend only ``claim_ttl`` bounds it.

So no claim is permanent, and a claim is freed only once its workflow can
no longer be running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import Celery, states
from celery.backends.base import DisabledBackend

from .logs import log_throttled
from .settings import Settings
from .store import Store

logger = logging.getLogger("cloaca_celery.sweep")

SWEEP_BATCH = 200


@dataclass(frozen=True)
class Verdict:
    """How an execution ended, as far as the result backend can tell."""

    status: str
    error: str | None


def _date_done(meta: dict[str, Any]) -> datetime | None:
    value = meta.get("date_done")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def assess(
    execution: dict[str, Any], metas: dict[str, dict[str, Any]], active_ids: set[str] | None,
    now: datetime, grace: float,
) -> Verdict | None:
    """Decide an execution's end from its tasks' result-backend states; ``None`` if it may still run.

    ``active_ids`` are the ids of the tasks that the workers named in the
    STARTED states report as executing right now (``inspect().active()``),
    or ``None`` when workers cannot be asked (then a STARTED task counts as
    running). A worker restarted under the same name does not report a task
    its previous process was running, so that task is known dead.
    """
    task_ids: list[str] = execution["task_ids"]
    final_id = execution["execution_id"]
    for tid in task_ids:
        meta = metas.get(tid, {})
        status = meta.get("status")
        if status == states.FAILURE and tid != final_id:
            return Verdict("failed", f"task {tid} failed: {meta.get('result')!r}")
        if status == states.REVOKED:
            return Verdict("revoked", f"task {tid} was revoked")
    final = metas.get(final_id, {})
    if final.get("status") == states.SUCCESS:
        return Verdict("succeeded", None)
    if final.get("status") == states.FAILURE:
        return Verdict("failed", f"recording the end failed: {final.get('result')!r}")
    running = {tid: m for tid, m in metas.items() if m.get("status") in (states.STARTED, states.RETRY)}
    if running:
        if active_ids is None or running.keys() & active_ids:
            return None
        hosts = sorted({str((m.get("result") or {}).get("hostname", "?")) for m in running.values()
                        if isinstance(m.get("result"), dict)})
        return Verdict("lost", f"its running step is no longer active on worker {', '.join(hosts) or '?'}")
    last_activity: datetime = execution["started_at"]
    for meta in metas.values():
        done = _date_done(meta)
        if done is not None and done > last_activity:
            last_activity = done
    idle = (now - last_activity).total_seconds()
    if idle > grace:
        return Verdict("lost", f"no step started or finished for {idle:.0f}s (setting cloaca_claim_grace)")
    return None


def _active_task_ids(app: Celery, hosts: set[str], timeout: float) -> set[str] | None:
    """Ids of the tasks the named workers are executing now; ``None`` if they cannot be asked."""
    if not hosts:
        return set()
    if app.conf.get("worker_enable_remote_control") is False:
        return None
    try:
        replies = app.control.inspect(destination=sorted(hosts), timeout=timeout).active()
    except Exception as exc:  # noqa: BLE001 - a broker without broadcast cannot answer
        logger.debug("sweep: workers cannot be asked (%s); relying on cloaca_claim_ttl", exc)
        return None
    active: set[str] = set()
    for tasks in (replies or {}).values():
        for task in tasks or []:
            if isinstance(task, dict) and task.get("id"):
                active.add(str(task["id"]))
    return active


def _moved_on(backend: Any, execution: dict[str, Any], seen: dict[str, dict[str, Any]]) -> bool:
    """Whether any task's state changed since ``seen`` was read (or cannot be read now)."""
    try:
        return any(backend.get_task_meta(tid).get("status") != seen.get(tid, {}).get("status")
                   for tid in execution["task_ids"])
    except Exception:  # noqa: BLE001 - unknown: decide at the next sweep
        return True


def sweep(app: Celery, settings: Settings, store: Store, now: datetime | None = None) -> int:
    """End the executions whose report never came; return how many were ended."""
    fixed_now = now
    now = now or datetime.now(timezone.utc)
    try:
        candidates = store.sweep_candidates(now.timestamp(), SWEEP_BATCH)
    except Exception as exc:  # noqa: BLE001 - asked again at the next sweep
        log_throttled(logger, "sweep-store", logging.WARNING,
                      "sweep: the store is unreachable (%s); trying again next sweep", type(exc).__name__)
        return 0
    if not candidates:
        return 0
    ended = 0
    backend = app.backend
    no_backend = isinstance(backend, DisabledBackend)
    metas: dict[str, dict[str, dict[str, Any]]] = {}
    started_hosts: set[str] = set()
    for execution in candidates:
        if no_backend:
            continue
        try:
            per_task = {tid: backend.get_task_meta(tid) for tid in execution["task_ids"]}
        except Exception as exc:  # noqa: BLE001 - an unreachable backend is asked again next sweep
            log_throttled(logger, "sweep-backend", logging.WARNING,
                          "sweep: the result backend is unreachable (%s); trying again next sweep", exc)
            return ended
        metas[execution["execution_id"]] = per_task
        for meta in per_task.values():
            if meta.get("status") in (states.STARTED, states.RETRY) and isinstance(meta.get("result"), dict):
                started_hosts.add(str(meta["result"].get("hostname", "")))
    # Wait for the workers' answer at most half a sweep interval (0.2 s to 1 s), so sweeps
    # do not pile up on the pool while a dead worker keeps them waiting.
    ask_for = min(1.0, max(0.2, settings.sweep_interval / 2))
    active = _active_task_ids(app, started_hosts, ask_for) if started_hosts else set()
    for execution in candidates:
        age = (now - execution["started_at"]).total_seconds()
        verdict: Verdict | None
        if no_backend:
            verdict = None
        else:
            verdict = assess(execution, metas[execution["execution_id"]], active, now, settings.claim_grace)
            if verdict is not None and verdict.status == "lost" and _moved_on(
                backend, execution, metas[execution["execution_id"]]
            ):
                verdict = None  # a step moved on between the two looks: the next sweep decides
        if verdict is None and age > settings.claim_ttl:
            verdict = Verdict("lost", f"still unfinished after {age:.0f}s (setting cloaca_claim_ttl)")
        if verdict is None:
            continue
        ended_at = fixed_now or datetime.now(timezone.utc)  # after the workers were asked
        if store.finish_execution(execution["execution_id"], verdict.status, verdict.error, ended_at):
            ended += 1
            logger.warning(
                "%s: execution %s of workflow %r marked %s by the sweep: %s",
                execution["trigger_name"], execution["execution_id"], execution["workflow"],
                verdict.status, verdict.error or "its final task succeeded",
            )
    return ended
