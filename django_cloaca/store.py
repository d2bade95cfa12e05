"""``DjangoStore``: the Django ORM queries of cloaca's ``Store``, on the project's database.

Same contract as ``cloaca_celery.sqlstore.SqlStore`` (the shared contract
suite runs against both), on the same tables (``models.py``); what the queries
decide (leases, what a finished poll writes, the sync diff, argument checks)
is in ``cloaca_celery.store``, and this module holds only the queries. Claims
of due polls use ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has
it; elsewhere (SQLite) each row is claimed by an update guarded by the value
it was read with, so concurrent dispatchers still split the rows instead of
doubling them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.lookups import GreaterThan

from cloaca_celery import store as rules
from cloaca_celery.errors import ConfigurationError
from cloaca_celery.store import DuePoll, NewExecution, PollLease, PollOutcome, PollRefusal, TriggerSpec

from .models import TriggerClaim, TriggerExecution, TriggerSchedule

SCHEDULE_ROW = (*rules.SCHEDULE_FIELDS, "next_poll_at")
claim_key = rules.claim_key


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
        advanced = Case(
            When(GreaterThan(F("next_poll_at") + F("poll_interval"), now),
                 then=F("next_poll_at") + F("poll_interval")),
            default=Value(now) + F("poll_interval"),
        )
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

    def set_enabled(self, name: str, enabled: bool) -> None:
        rules.check_enabled(name, enabled)
        changed = TriggerSchedule.objects.using(self.using).filter(pk=name).update(
            enabled=enabled, updated_at=datetime.now(timezone.utc)
        )
        if not changed:
            raise rules.unknown_trigger(name, self.url)

    # -- executions and claims ------------------------------------------------

    def record_fire(self, execution: NewExecution, claim_until: float | None, now: float) -> bool:
        claims = TriggerClaim.objects.using(self.using)
        with transaction.atomic(using=self.using):
            if claim_until is not None:
                new_claim = rules.claim_row(execution, claim_until, now)
                key = new_claim["claim_key"]
                try:
                    with transaction.atomic(using=self.using):
                        claims.create(**new_claim)
                except IntegrityError:
                    holder = claims.filter(pk=key).values_list("execution_id", flat=True).first()
                    if holder is None:
                        return False  # released meanwhile: this poll lost the race, the next one may win
                    alive = TriggerExecution.objects.using(self.using).filter(
                        execution_id=OuterRef("execution_id"), status__in=rules.ACTIVE_STATUSES
                    )
                    # The holder's id in the WHERE makes concurrent takeovers exclusive: after the
                    # first commits, the row no longer matches (a sub-select alone would be judged
                    # on the old snapshot by PostgreSQL's re-check).
                    taken = claims.filter(pk=key, execution_id=holder).filter(
                        Q(expires_at__lt=now) | ~Exists(alive)
                    ).update(**rules.claim_holder(execution, claim_until, now))
                    if not taken:
                        return False
            TriggerExecution.objects.using(self.using).create(**rules.execution_row(execution))
        return True

    def mark_running(self, execution_id: str, at: datetime) -> bool:
        return bool(TriggerExecution.objects.using(self.using).filter(
            pk=execution_id, status="queued").update(status="running", running_at=at))

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        values = rules.execution_end(status, error, at)
        with transaction.atomic(using=self.using):
            done = TriggerExecution.objects.using(self.using).filter(
                pk=execution_id, status__in=rules.ACTIVE_STATUSES
            ).update(**values)
            TriggerClaim.objects.using(self.using).filter(execution_id=execution_id).delete()
        return bool(done)

    def active_executions(self, started_before: datetime, limit: int) -> list[dict[str, Any]]:
        rows = TriggerExecution.objects.using(self.using).filter(
            status__in=rules.ACTIVE_STATUSES, started_at__lt=started_before
        ).order_by("started_at").values(*rules.EXECUTION_FIELDS)[:limit]
        return [rules.execution_dict(row) for row in rows]

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

    def prune_executions(self, completed_before: datetime, batch_size: int = 1000) -> int:
        total = 0
        rows = TriggerExecution.objects.using(self.using)
        while True:
            ids = list(rows.filter(status__in=rules.FINAL_STATUSES, completed_at__lt=completed_before)
                       .values_list("pk", flat=True)[:batch_size])
            if not ids:
                return total
            deleted, _ = rows.filter(pk__in=ids).delete()
            total += deleted


def _lease_free(now: float) -> Q:
    return Q(poll_lease_until__isnull=True) | Q(poll_lease_until__lt=now)
