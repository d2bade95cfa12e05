"""``DjangoStore``: the Django ORM queries of cloaca's ``Store``, on the project's database.

Same contract as ``cloaca_celery.sqlstore.SqlStore`` (the shared contract
suite runs against both), on the same tables (``models.py``); what the queries
decide (leases, what a finished poll writes, the sync diff, argument checks)
is in ``cloaca_celery.store``, and this module holds only the queries. Claims
of due polls use ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has
it; elsewhere (SQLite) each row is claimed by an update guarded by the value
it was read with, so concurrent dispatchers still split the rows instead of
doubling them.

A step's start is a conditional ``UPDATE`` of its execution then the upsert
of its row, in one transaction. A step's end and a requested end first lock
the execution's row by writing its status over itself (SQLite has no row
locks: the write takes its write lock before anything is read), so sibling
steps ending together take turns and each sees the others' rows. A fire held
back by an overlap policy locks its key's claim row the same way before it
reads whether the claim's execution is active.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import (
    Case,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Floor

from cloaca_celery import store as rules
from cloaca_celery.counters import HealthCounts, health_shard
from cloaca_celery.errors import ConfigurationError
from cloaca_celery.store import (
    DuePoll,
    Held,
    NewExecution,
    PendingFire,
    PollLease,
    PollOutcome,
    PollRefusal,
    TriggerSpec,
)

from .models import (
    HealthMinute,
    TriggerClaim,
    TriggerExecution,
    TriggerPending,
    TriggerSchedule,
    TriggerStep,
)

SCHEDULE_ROW = (*rules.SCHEDULE_FIELDS, "next_poll_at")
claim_key = rules.claim_key


class DjangoStore:
    """Schedules, executions and claims through the Django ORM."""

    def __init__(self, using: str | None = None) -> None:
        if not settings.USE_TZ:
            raise ConfigurationError(
                "django_cloaca needs USE_TZ = True (cloaca stores timezone-aware UTC times): with "
                "USE_TZ = False Django would read and write them as naive local times, and the ages "
                "and ends of executions would be wrong. Set USE_TZ = True in the Django settings."
            )
        self.using = using or router.db_for_write(TriggerSchedule)
        self.url = f"django database {self.using!r}"

    @property
    def _skip_locked(self) -> bool:
        return bool(connections[self.using].features.has_select_for_update_skip_locked)

    def ensure_schema(self) -> None:
        tables = set(connections[self.using].introspection.table_names())
        missing = {
            "cloaca_schedules", "cloaca_executions", "cloaca_claims", "cloaca_steps", "cloaca_pending",
            "cloaca_health_minutes",
        }
        missing -= tables
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
        rows = TriggerSchedule.objects.using(self.using)
        plan = rules.sync_plan(rows.values(*rules.SYNC_FIELDS), specs, now, prune, spread)
        if plan.new:  # a row another process created meanwhile is left alone
            new_rows = [TriggerSchedule(**row) for row in plan.new]
            rows.bulk_create(new_rows, batch_size=1000, ignore_conflicts=True)
        for name, values in plan.changed.items():
            rows.filter(pk=name).update(**values)
        if plan.gone:
            rows.filter(pk__in=plan.gone).update(**plan.gone_values)

    def claim_due(self, now: float, limit: int) -> list[DuePoll]:
        rows = TriggerSchedule.objects.using(self.using)
        # rules.advance: the first slot of the row's own grid after now (the row is due: >= 0).
        behind = ExpressionWrapper((Value(now) - F("next_poll_at")) / F("poll_interval"),
                                   output_field=FloatField())
        advanced = F("next_poll_at") + (Floor(behind) + 1) * F("poll_interval")
        stamped = {"next_poll_at": advanced, "last_poll_at": rules.utc(now)}
        if self._skip_locked:
            with transaction.atomic(using=self.using):
                picked = list(
                    rows.due(now).order_by("next_poll_at")
                    .select_for_update(skip_locked=True)
                    .values_list(*rules.DUE_FIELDS)[:limit]
                )
                if picked:
                    rows.filter(pk__in=[p[0] for p in picked]).update(**stamped)
            return [
                rules.due_poll(name, interval, rules.advance(at, interval, now), errors)
                for name, interval, at, errors in picked
            ]
        candidates = list(rows.due(now).order_by("next_poll_at").values_list(*rules.DUE_FIELDS)[:limit])
        won: list[DuePoll] = []
        for name, interval, next_poll_at, errors in candidates:
            taken = rows.filter(pk=name, next_poll_at=next_poll_at).update(**stamped)
            if taken:
                won.append(rules.due_poll(name, interval, rules.advance(next_poll_at, interval, now), errors))
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
            taken = candidates.update(**rules.poll_hold(now, lease_seconds, token))
        row = rows.filter(pk=name).values(*rules.POLL_ROW_FIELDS).first()
        return rules.poll_start(
            name, row, now, lease_seconds, token, hold=hold, taken=bool(taken), slot_end=slot_end
        )

    def extend_poll_lease(self, name: str, token: str, until: float, now: float) -> bool:
        done = TriggerSchedule.objects.using(self.using).filter(pk=name).filter(
            _lease_free(now) | Q(poll_token=token)
        ).update(poll_lease_until=until, poll_token=token)
        return bool(done)

    def finish_poll(
        self, lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None = None
    ) -> bool:
        return rules.finish_poll(lease, outcome, now, hold_until, self._write_poll)

    def _write_poll(self, change: rules.PollChange) -> int:
        values = {name: F(name) + 1 if v is rules.INCREMENT else v for name, v in change.values.items()}
        return TriggerSchedule.objects.using(self.using).filter(**change.conditions).update(**values)

    def list_schedules(self) -> list[dict[str, Any]]:
        rows = TriggerSchedule.objects.using(self.using).order_by("trigger_name").values(*SCHEDULE_ROW)
        return [rules.schedule_dict(row) for row in rows]

    def get_schedule(self, name: str) -> dict[str, Any]:
        row = TriggerSchedule.objects.using(self.using).filter(pk=name).values(*SCHEDULE_ROW).first()
        if row is None:
            raise rules.unknown_trigger(name, self.url)
        return rules.schedule_dict(row)

    def set_enabled(
        self, name: str, enabled: bool, *, note: str | None = None, by: str | None = None
    ) -> None:
        rules.check_enabled(name, enabled)
        values = rules.switch_values(name, enabled, self.now(), note, by)
        changed = TriggerSchedule.objects.using(self.using).filter(pk=name).update(**values)
        if not changed:
            raise rules.unknown_trigger(name, self.url)

    # -- executions and claims ------------------------------------------------

    def now(self) -> float:
        connection = connections[self.using]
        with connection.cursor() as cursor:
            cursor.execute(rules.clock_query(connection.vendor))
            return float(cursor.fetchone()[0])

    def record_fire(self, execution: NewExecution, *, claim: bool, now: float, deadline: float) -> bool:
        with transaction.atomic(using=self.using):
            if claim and not self.take_claim(execution, now):
                return False
            self.insert_execution(rules.execution_row(execution, deadline))
        return True

    @property
    def _executions(self) -> QuerySet[TriggerExecution]:
        return TriggerExecution.objects.using(self.using)

    def insert_execution(self, row: dict[str, Any]) -> None:
        self._executions.create(**row)

    def take_claim(self, execution: NewExecution, now: float) -> bool:
        """Take the claim of the execution's work key, from a holder whose execution is no longer active."""
        claims = TriggerClaim.objects.using(self.using)
        new_claim = rules.claim_row(execution, now)
        key = new_claim["claim_key"]
        try:
            with transaction.atomic(using=self.using):
                claims.create(**new_claim)
            return True
        except IntegrityError:
            pass
        holder = claims.filter(pk=key).values_list("execution_id", flat=True).first()
        if holder is None:
            return False  # released meanwhile: this poll lost the race, the next one may win
        alive = self._executions.filter(pk=OuterRef("execution_id"), status__in=rules.ACTIVE_STATUSES)
        # The holder's id in the WHERE makes concurrent takeovers exclusive: after the first
        # commits, the row no longer matches (a sub-select alone would be judged on the old
        # snapshot by PostgreSQL's re-check).
        taken = claims.filter(pk=key, execution_id=holder).filter(~Exists(alive)).update(
            **rules.claim_holder(execution, now)
        )
        return bool(taken)

    def start_step(self, execution_id: str, task_id: str, now: float, lease_until: float) -> bool:
        others_live = self._steps.filter(execution_id=execution_id, state__in=rules.LIVE_STEP_STATES).exclude(
            pk=task_id
        )
        deadline = Case(
            When(Exists(others_live), deadline_at__gt=lease_until, then=F("deadline_at")),
            default=Value(lease_until),
        )
        change = rules.step_change(now)
        with transaction.atomic(using=self.using):
            started = self._executions.filter(
                pk=execution_id, status__in=rules.ACTIVE_STATUSES, ending_status__isnull=True
            ).update(
                status="running", deadline_at=deadline,
                running_at=Coalesce(F("running_at"), Value(rules.utc(now), output_field=DateTimeField())),
            )
            if not started:
                return False
            self.write_step(rules.step_row(execution_id, task_id, now, change), change)
        return True

    @property
    def _steps(self) -> QuerySet[TriggerStep]:
        return TriggerStep.objects.using(self.using)

    # The queries of rules.StepEndQueries, run inside the transaction of end_step and request_end.

    def locked_execution(self, execution_id: str) -> dict[str, Any] | None:
        """The row is locked by writing its status over itself: SQLite has no row locks, and
        a transaction there must write first to take the write lock before it reads."""
        active = self._executions.filter(pk=execution_id, status__in=rules.ACTIVE_STATUSES)
        if not active.update(status=F("status")):
            return None
        return active.values(*rules.ENDING_FIELDS).first()

    def write_step(self, row: dict[str, Any], change: dict[str, Any]) -> None:
        targeted = connections[self.using].features.supports_update_conflicts_with_target
        self._steps.bulk_create(
            [TriggerStep(**row)], update_conflicts=True, update_fields=list(change),
            unique_fields=["task_id"] if targeted else None,
        )

    def others_live(self, execution_id: str, task_id: str | None) -> bool:
        live = self._steps.filter(execution_id=execution_id, state__in=rules.LIVE_STEP_STATES)
        return (live if task_id is None else live.exclude(pk=task_id)).exists()

    def write_execution(self, execution_id: str, change: rules.ExecutionChange) -> None:
        if change.values:
            self._executions.filter(pk=execution_id).update(**change.values)
        if change.ends:
            TriggerClaim.objects.using(self.using).filter(execution_id=execution_id).delete()

    def end_step(
        self, execution_id: str, task_id: str, now: float, idle_until: float,
        retry_until: float | None = None,
    ) -> bool:
        with transaction.atomic(using=self.using):
            return rules.end_step(self, execution_id, task_id, now, idle_until, retry_until)

    def request_end(
        self, execution_id: str, status: str, error: str | None, now: float, task_id: str | None = None
    ) -> bool:
        with transaction.atomic(using=self.using):
            return rules.request_end(self, execution_id, status, error, now, task_id)

    def renew_leases(self, execution_ids: Collection[str], until: float) -> set[str]:
        ids = set(execution_ids)
        if not ids:
            return set()
        given_active = self._executions.filter(pk__in=ids, status__in=rules.ACTIVE_STATUSES)
        renewed = Case(When(deadline_at__gt=until, then=F("deadline_at")), default=Value(until))
        given_active.update(deadline_at=renewed)
        return ids - set(given_active.values_list("pk", flat=True))

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        values = rules.execution_end(status, error, at)
        with transaction.atomic(using=self.using):
            done = self._executions.filter(pk=execution_id, status__in=rules.ACTIVE_STATUSES).update(**values)
            TriggerClaim.objects.using(self.using).filter(execution_id=execution_id).delete()
        return bool(done)

    def end_overdue(self, execution_id: str, status: str, error: str | None, now: float) -> bool:
        values = rules.execution_end(status, error, rules.utc(now))
        with transaction.atomic(using=self.using):
            done = self._executions.filter(
                pk=execution_id, status__in=rules.ACTIVE_STATUSES, deadline_at__lt=now
            ).update(**values)
            if done:
                TriggerClaim.objects.using(self.using).filter(execution_id=execution_id).delete()
        return bool(done)

    def sweep_candidates(
        self, now: float, limit: int, after: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        overdue = self._executions.filter(status__in=rules.ACTIVE_STATUSES, deadline_at__lt=now)
        if after is not None:
            deadline, last_id = after
            overdue = overdue.filter(Q(deadline_at__gt=deadline) | Q(deadline_at=deadline, pk__gt=last_id))
        rows = list(overdue.order_by(*rules.SWEEP_ORDER).values(*rules.SWEEP_FIELDS)[:limit])
        ids = [row["execution_id"] for row in rows]
        found = self._steps.filter(execution_id__in=ids).order_by(*rules.STEP_ORDER).values(
            *rules.STEP_FIELDS, "execution_id"
        ) if ids else []
        return rules.sweep_candidates(rows, found)

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        row = TriggerExecution.objects.using(self.using).filter(pk=execution_id).values(
            *rules.EXECUTION_FIELDS).first()
        if row is None:
            raise rules.unknown_execution(execution_id)
        return rules.execution_dict(row)

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        rules.check_history_query(status, limit, offset)
        rows = TriggerExecution.objects.using(self.using).filter(trigger_name=trigger_name)
        if status is not None:
            rows = rows.filter(status=status)
        rows = rows.order_by("-started_at", "-execution_id")
        start = offset or 0
        page = rows[start:start + limit] if limit is not None else rows[start:]
        return [rules.execution_dict(row) for row in page.values(*rules.EXECUTION_FIELDS)]

    def prune_executions(
        self, completed_before: datetime, batch_size: int = 1000, batches: int | None = None
    ) -> int:
        total = 0
        ended = self._executions.filter(status__in=rules.FINAL_STATUSES, completed_at__lt=completed_before)
        for _ in itertools.repeat(None) if batches is None else range(batches):
            with transaction.atomic(using=self.using):
                ids = list(ended.values_list("pk", flat=True)[:batch_size])
                if not ids:
                    break
                total += self._executions.filter(pk__in=ids).delete()[0]
                self._steps.filter(execution_id__in=ids).delete()
        return total

    # -- health counts -----------------------------------------------------------

    def save_health(self, process: str, rows: Collection[HealthCounts]) -> None:
        objects = [HealthMinute(**row) for row in rules.health_rows(process, rows)]
        if not objects:
            return
        features = connections[self.using].features
        target = ["group_key"] if features.supports_update_conflicts_with_target else None
        changed = [name for name in rules.HEALTH_FIELDS if name != "group_key"]
        with transaction.atomic(using=self.using):
            HealthMinute.objects.using(self.using).bulk_create(
                objects, update_conflicts=True, unique_fields=target, update_fields=changed,
            )

    def health(self, trigger_name: str | None, since: datetime) -> list[HealthCounts]:
        rows = HealthMinute.objects.using(self.using).filter(minute__gte=rules.health_since(since))
        if trigger_name is not None:
            rows = rows.filter(shard=health_shard(trigger_name))
        return rules.merged_health(rows.values("minute", "counts"), trigger_name)

    def last_polls(self, since: datetime | None = None) -> dict[str, datetime]:
        rows = HealthMinute.objects.using(self.using).exclude(last_poll_at=None)
        if since is not None:
            rows = rows.filter(minute__gte=rules.health_since(since))
        return rules.last_polls_of(rows.values("counts"))

    def prune_health(self, before: datetime) -> int:
        return int(HealthMinute.objects.using(self.using).filter(minute__lt=before).delete()[0])

    # -- pending fires (overlap policies) -----------------------------------------

    def hold_pending(self, pending: PendingFire, *, replace: bool, max_pending: int) -> Held:
        with transaction.atomic(using=self.using):
            return rules.hold_pending(self, pending, replace, max_pending)

    def next_pending(self, trigger_name: str, dedup_hash: str) -> PendingFire | None:
        row = self._pending.filter(trigger_name=trigger_name, dedup_hash=dedup_hash).order_by(
            *rules.PENDING_ORDER).values(*rules.PENDING_FIELDS).first()
        return None if row is None else rules.pending_fire(row)

    def start_pending(
        self, pending_id: str, execution: NewExecution, *, now: float, deadline: float
    ) -> bool:
        with transaction.atomic(using=self.using):
            started = rules.start_pending(self, pending_id, execution, now, deadline)
            if not started:
                transaction.set_rollback(True, using=self.using)
        return started

    def orphan_pending(self, limit: int) -> list[tuple[str, str]]:
        active = self._executions.filter(pk=OuterRef("execution_id"), status__in=rules.ACTIVE_STATUSES)
        held = TriggerClaim.objects.using(self.using).filter(
            trigger_name=OuterRef("trigger_name"), context_hash=OuterRef("dedup_hash")
        ).filter(Exists(active))
        keys = self._pending.filter(~Exists(held)).values("trigger_name", "dedup_hash").annotate(
            oldest=Min("created_at")
        ).order_by("oldest", "trigger_name", "dedup_hash")
        return [(key["trigger_name"], key["dedup_hash"]) for key in keys[:limit]]

    def pending_fires(self, trigger_name: str) -> list[PendingFire]:
        rows = self._pending.filter(trigger_name=trigger_name).order_by(*rules.PENDING_ORDER)
        return [rules.pending_fire(row) for row in rows.values(*rules.PENDING_FIELDS)]

    @property
    def _pending(self) -> QuerySet[TriggerPending]:
        return TriggerPending.objects.using(self.using)

    # The queries of rules.HoldQueries and rules.StartQueries, run inside the transaction of
    # hold_pending and start_pending (take_claim and insert_execution are above).

    def locked_holder(self, trigger_name: str, dedup_hash: str) -> str | None:
        """The claim row is locked by writing its holder over itself (as in ``locked_execution``)."""
        claim = TriggerClaim.objects.using(self.using).filter(pk=rules.claim_key(trigger_name, dedup_hash))
        if not claim.update(execution_id=F("execution_id")):
            return None
        return claim.values_list("execution_id", flat=True).first()

    def active_task_ids(self, execution_id: str) -> list[str] | None:
        found = self._executions.filter(pk=execution_id, status__in=rules.ACTIVE_STATUSES)
        task_ids = found.values_list("task_ids", flat=True).first()
        return None if task_ids is None else list(task_ids)

    def waiting_fires(self, trigger_name: str, dedup_hash: str) -> list[dict[str, Any]]:
        of_key = self._pending.filter(trigger_name=trigger_name, dedup_hash=dedup_hash)
        return list(of_key.values("pending_id", "created_at"))

    def drop_pending(self, pending_ids: list[str]) -> int:
        return self._pending.filter(pk__in=pending_ids).delete()[0]

    def insert_pending(self, row: dict[str, Any]) -> None:
        self._pending.create(**row)


def _lease_free(now: float) -> Q:
    return Q(poll_lease_until__isnull=True) | Q(poll_lease_until__lt=now)
