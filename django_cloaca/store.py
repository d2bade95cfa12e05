"""``DjangoStore``: cloaca's ``Store`` on the Django ORM and the project's database.

Same contract as ``cloaca_celery.sqlstore.SqlStore`` (the shared contract
suite runs against both). Claims of due polls use ``SELECT ... FOR UPDATE
SKIP LOCKED`` where the database has it; elsewhere (SQLite) each row is
claimed by an update guarded by the value it was read with, so concurrent
dispatchers still split the rows instead of doubling them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.lookups import GreaterThan

from cloaca_celery.errors import ConfigurationError, UnknownTriggerError
from cloaca_celery.store import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    STATUSES,
    DuePoll,
    NewExecution,
    PollLease,
    PollOutcome,
    PollRefusal,
    TriggerSpec,
    advance,
    due_poll,
    first_slot,
    lease_refusal,
)

from .models import TriggerClaim, TriggerExecution, TriggerSchedule

CLAIMED = ("trigger_name", "poll_interval", "next_poll_at", "consecutive_errors")
SCHEDULE_FIELDS = (
    "trigger_name", "workflow", "poll_interval", "allow_concurrent", "enabled",
    "registered", "last_poll_at", "last_fire_at", "consecutive_errors", "last_error",
    "last_error_at", "state", "created_at", "updated_at", "dedup_count",
)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def claim_key(trigger_name: str, context_hash: str) -> str:
    return f"{trigger_name}\x1f{context_hash}"


class DjangoStore:
    """Schedules, executions and claims through the Django ORM."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using or router.db_for_write(TriggerSchedule)
        self.url = f"django database {self.using!r}"

    @property
    def _skip_locked(self) -> bool:
        return bool(connections[self.using].features.has_select_for_update_skip_locked)

    def ensure_schema(self) -> None:
        tables = set(connections[self.using].introspection.table_names())
        missing = {"cloaca_schedules", "cloaca_executions", "cloaca_claims"} - tables
        if missing:
            raise ConfigurationError(
                f"the django_cloaca tables {', '.join(sorted(missing))} do not exist in "
                f"database {self.using!r}: run `manage.py migrate django_cloaca`"
            )

    def ping(self) -> None:
        """Open a connection (and prove the database answers)."""
        with connections[self.using].cursor() as cursor:
            cursor.execute("SELECT 1")

    def close(self) -> None:
        connections[self.using].close()

    def dispose(self) -> None:
        connections[self.using].close()

    # -- schedules ---------------------------------------------------------

    def sync_triggers(
        self, specs: Iterable[TriggerSpec], now: float, prune: bool = True, spread: bool = False
    ) -> None:
        wanted = {spec.name: spec for spec in specs}
        now_dt = _utc(now)
        rows = TriggerSchedule.objects.using(self.using)
        existing = {r.trigger_name: r for r in rows.only(
            "trigger_name", "workflow", "poll_interval", "allow_concurrent", "registered")}
        missing = [
            TriggerSchedule(
                trigger_name=name, workflow=spec.workflow, poll_interval=spec.poll_interval,
                allow_concurrent=spec.allow_concurrent, enabled=True, registered=True,
                next_poll_at=first_slot(name, spec.poll_interval, now, spread),
                state={}, created_at=now_dt, updated_at=now_dt,
            )
            for name, spec in wanted.items() if name not in existing
        ]
        if missing:  # a row another process created meanwhile is left alone
            rows.bulk_create(missing, batch_size=1000, ignore_conflicts=True)
        for name, spec in wanted.items():
            row = existing.get(name)
            if row is None:
                continue
            if (row.workflow, row.poll_interval, row.allow_concurrent, row.registered) != (
                spec.workflow, spec.poll_interval, spec.allow_concurrent, True
            ):
                rows.filter(pk=name).update(
                    workflow=spec.workflow, poll_interval=spec.poll_interval,
                    allow_concurrent=spec.allow_concurrent, registered=True,
                    next_poll_at=first_slot(name, spec.poll_interval, now, spread), updated_at=now_dt,
                )
        if prune:
            gone = [n for n, r in existing.items() if n not in wanted and r.registered]
            if gone:
                rows.filter(pk__in=gone).update(registered=False, updated_at=now_dt)

    def claim_due(self, now: float, limit: int) -> list[DuePoll]:
        rows = TriggerSchedule.objects.using(self.using)
        advanced = Case(
            When(GreaterThan(F("next_poll_at") + F("poll_interval"), now),
                 then=F("next_poll_at") + F("poll_interval")),
            default=Value(now) + F("poll_interval"),
        )
        stamped = {"next_poll_at": advanced, "last_poll_at": _utc(now)}
        if self._skip_locked:
            with transaction.atomic(using=self.using):
                picked = list(
                    rows.due(now).order_by("next_poll_at")
                    .select_for_update(skip_locked=True)
                    .values_list(*CLAIMED)[:limit]
                )
                if picked:
                    rows.filter(pk__in=[p[0] for p in picked]).update(**stamped)
            return [
                due_poll(name, interval, advance(at, interval, now), errors)
                for name, interval, at, errors in picked
            ]
        candidates = list(
            rows.due(now).order_by("next_poll_at")
            .values_list(*CLAIMED)[:limit]
        )
        won: list[DuePoll] = []
        for name, interval, next_poll_at, errors in candidates:
            taken = rows.filter(pk=name, next_poll_at=next_poll_at).update(**stamped)
            if taken:
                won.append(due_poll(name, interval, advance(next_poll_at, interval, now), errors))
        return won

    def begin_poll(
        self, name: str, now: float, lease_seconds: float, token: str, *, hold: bool = True,
        slot_end: float | None = None,
    ) -> PollLease | PollRefusal:
        rows = TriggerSchedule.objects.using(self.using)
        taken = 0
        if hold:
            candidates = rows.filter(pk=name, enabled=True).filter(
                _lease_free(now) | Q(poll_token__isnull=True)
            )
            if slot_end is not None:
                candidates = candidates.filter(next_poll_at__lte=slot_end)
            taken = candidates.update(
                poll_lease_until=now + lease_seconds, poll_token=token, last_poll_at=_utc(now)
            )
        row = rows.filter(pk=name).values(
            "enabled", "state", "state_version", "consecutive_errors", "poll_lease_until", "poll_token",
            "next_poll_at",
        ).first()
        if row is None:
            return PollRefusal(name, "missing")
        refusal = lease_refusal(name, row["enabled"], row["poll_lease_until"], row["poll_token"], now)
        if hold and not taken:
            if refusal is None and slot_end is not None and float(row["next_poll_at"]) > slot_end:
                return PollRefusal(name, "late")
            return refusal or PollRefusal(name, "running")
        if not hold and refusal is not None:
            return refusal
        return PollLease(
            trigger_name=name, token=token, until=now + lease_seconds,
            state=dict(row["state"] or {}), state_version=int(row["state_version"]),
            consecutive_errors=int(row["consecutive_errors"]), held=hold,
        )

    def extend_poll_lease(self, name: str, token: str, until: float, now: float) -> bool:
        done = TriggerSchedule.objects.using(self.using).filter(pk=name).filter(
            _lease_free(now) | Q(poll_token=token)
        ).update(poll_lease_until=until, poll_token=token)
        return bool(done)

    def finish_poll(
        self, lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None = None
    ) -> bool:
        values: dict[str, Any] = {}
        conditions: dict[str, Any] = {"pk": lease.trigger_name}
        if lease.held:
            kept = hold_until is not None and hold_until > now
            values.update(poll_lease_until=hold_until if kept else None, poll_token=None)
            conditions["poll_token"] = lease.token
        if outcome.state is not None:
            conditions["state_version"] = lease.state_version
        if outcome.error is not None:
            values.update(
                consecutive_errors=F("consecutive_errors") + 1,
                last_error=outcome.error[:4000], last_error_at=_utc(now),
            )
        elif lease.consecutive_errors:
            values["consecutive_errors"] = 0
        if outcome.fired_at is not None:
            values["last_fire_at"] = outcome.fired_at
        if outcome.state is not None:
            values.update(state=outcome.state, state_version=F("state_version") + 1)
        if outcome.deduplicated:
            values["dedup_count"] = F("dedup_count") + 1
        if not values:
            return True
        done = TriggerSchedule.objects.using(self.using).filter(**conditions).update(**values)
        return bool(done)

    def list_schedules(self) -> list[dict[str, Any]]:
        return [_schedule_dict(r) for r in TriggerSchedule.objects.using(self.using).order_by("trigger_name")]

    def get_schedule(self, name: str) -> dict[str, Any]:
        row = TriggerSchedule.objects.using(self.using).filter(pk=name).first()
        if row is None:
            raise UnknownTriggerError(f"unknown trigger {name!r}: no schedule row in the {self.url}")
        return _schedule_dict(row)

    def set_enabled(self, name: str, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"set_enabled({name!r}, ...): enabled must be True or False")
        changed = TriggerSchedule.objects.using(self.using).filter(pk=name).update(
            enabled=enabled, updated_at=datetime.now(timezone.utc)
        )
        if not changed:
            raise UnknownTriggerError(f"unknown trigger {name!r}: no schedule row in the {self.url}")

    # -- executions and claims ------------------------------------------------

    def record_fire(self, execution: NewExecution, claim_until: float | None, now: float) -> bool:
        claims = TriggerClaim.objects.using(self.using)
        with transaction.atomic(using=self.using):
            if claim_until is not None:
                key = claim_key(execution.trigger_name, execution.context_hash)
                try:
                    with transaction.atomic(using=self.using):
                        claims.create(
                            claim_key=key, trigger_name=execution.trigger_name,
                            context_hash=execution.context_hash, execution_id=execution.execution_id,
                            claimed_at=now, expires_at=claim_until,
                        )
                except IntegrityError:
                    holder = claims.filter(pk=key).values_list("execution_id", flat=True).first()
                    if holder is None:
                        return False  # released meanwhile: this poll lost the race, the next one may win
                    alive = TriggerExecution.objects.using(self.using).filter(
                        execution_id=OuterRef("execution_id"), status__in=ACTIVE_STATUSES
                    )
                    # The holder's id in the WHERE makes concurrent takeovers exclusive: after the
                    # first commits, the row no longer matches (a sub-select alone would be judged
                    # on the old snapshot by PostgreSQL's re-check).
                    taken = claims.filter(pk=key, execution_id=holder).filter(
                        Q(expires_at__lt=now) | ~Exists(alive)
                    ).update(execution_id=execution.execution_id, claimed_at=now, expires_at=claim_until)
                    if not taken:
                        return False
            TriggerExecution.objects.using(self.using).create(
                execution_id=execution.execution_id, trigger_name=execution.trigger_name,
                workflow=execution.workflow, context=execution.context,
                context_hash=execution.context_hash, status="queued",
                task_ids=list(execution.task_ids), started_at=execution.started_at,
            )
        return True

    def mark_running(self, execution_id: str, at: datetime) -> bool:
        return bool(TriggerExecution.objects.using(self.using).filter(
            pk=execution_id, status="queued").update(status="running", running_at=at))

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"finish_execution: {status!r} is not a final status ({', '.join(FINAL_STATUSES)})"
            )
        with transaction.atomic(using=self.using):
            done = TriggerExecution.objects.using(self.using).filter(
                pk=execution_id, status__in=ACTIVE_STATUSES
            ).update(status=status, completed_at=at, error=None if error is None else error[:8000])
            TriggerClaim.objects.using(self.using).filter(execution_id=execution_id).delete()
        return bool(done)

    def active_executions(self, started_before: datetime, limit: int) -> list[dict[str, Any]]:
        rows = TriggerExecution.objects.using(self.using).filter(
            status__in=ACTIVE_STATUSES, started_at__lt=started_before
        ).order_by("started_at")[:limit]
        return [_execution_dict(r) for r in rows]

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        row = TriggerExecution.objects.using(self.using).filter(pk=execution_id).first()
        if row is None:
            raise KeyError(f"unknown execution {execution_id!r}")
        return _execution_dict(row)

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        for label, value in (("limit", limit), ("offset", offset)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{label} must be a non-negative integer or None, got {value!r}")
        rows = TriggerExecution.objects.using(self.using).filter(trigger_name=trigger_name)
        if status is not None:
            rows = rows.filter(status=status)
        rows = rows.order_by("-started_at", "-execution_id")
        start = offset or 0
        page = rows[start:start + limit] if limit is not None else rows[start:]
        return [_execution_dict(r) for r in page]

    def prune_executions(self, completed_before: datetime, batch_size: int = 1000) -> int:
        total = 0
        rows = TriggerExecution.objects.using(self.using)
        while True:
            ids = list(rows.filter(status__in=FINAL_STATUSES, completed_at__lt=completed_before)
                       .values_list("pk", flat=True)[:batch_size])
            if not ids:
                return total
            deleted, _ = rows.filter(pk__in=ids).delete()
            total += deleted


def _schedule_dict(row: TriggerSchedule) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in SCHEDULE_FIELDS}
    for key in ("last_poll_at", "last_fire_at", "last_error_at", "created_at", "updated_at"):
        data[key] = _aware(data[key])
    data["poll_interval"] = float(data["poll_interval"])
    data["state"] = dict(data["state"] or {})
    data["next_poll_at"] = _utc(float(row.next_poll_at))
    return data


def _execution_dict(row: TriggerExecution) -> dict[str, Any]:
    data = row.as_dict()
    for key in ("started_at", "running_at", "completed_at"):
        data[key] = _aware(data[key])
    data["context"] = dict(data["context"] or {})
    data["task_ids"] = list(data["task_ids"] or [])
    return data


def _lease_free(now: float) -> Q:
    return Q(poll_lease_until__isnull=True) | Q(poll_lease_until__lt=now)
