"""``SqlStore``: the SQLAlchemy Core queries of :class:`~cloaca_celery.store.Store`.

Works on SQLite (the embedded default), PostgreSQL and MySQL/MariaDB. The
tables are in :mod:`cloaca_celery.sqlschema`, the engines in
:mod:`cloaca_celery.sqlengine`, and what the queries decide (leases, what a
finished poll writes, the sync diff, argument checks) in
:mod:`cloaca_celery.store`: this module holds only the queries. The
dispatcher's claim is one ``UPDATE ... RETURNING`` where the database has it
(PostgreSQL with ``FOR UPDATE SKIP LOCKED`` in the sub-select, SQLite inside
a ``BEGIN IMMEDIATE`` transaction), and ``SELECT ... FOR UPDATE SKIP LOCKED``
followed by an ``UPDATE`` in one transaction on MySQL/MariaDB.

A step's start (its fencing answer) is one statement on PostgreSQL: a
data-modifying CTE whose conditional ``UPDATE`` of the execution feeds the
upsert of the step row; elsewhere the same two writes in one transaction. A
step's end and a requested end lock the execution row first (``SELECT ... FOR
UPDATE``; SQLite's ``BEGIN IMMEDIATE``), so sibling steps ending together take
turns and each sees the others' rows. The heartbeat and the sweep's end are
conditional updates of the execution row: of a renewal and an overdue end
racing, exactly one wins. A fire held back by an overlap policy locks its
key's claim row first (``SELECT ... FOR UPDATE``), so the end of the
execution holding it, which deletes that row, either comes before or waits.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Double,
    Engine,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import store as rules
from .counters import HealthCounts, health_shard
from .sqlengine import create_store_engine, normalize_database_url, redact_url
from .sqlschema import (
    MYSQL_TABLE_OPTIONS,
    UTCDateTime,
    claims,
    executions,
    health,
    metadata,
    pending,
    schedules,
    steps,
)
from .store import (
    ACTIVE_STATUSES,
    EXECUTION_FIELDS,
    FINAL_STATUSES,
    LIVE_STEP_STATES,
    SCHEDULE_FIELDS,
    DuePoll,
    Held,
    NewExecution,
    PendingFire,
    PollChange,
    PollLease,
    PollOutcome,
    PollRefusal,
    TriggerSpec,
)

__all__ = [
    "EXECUTION_FIELDS",
    "MYSQL_TABLE_OPTIONS",
    "SCHEDULE_FIELDS",
    "SqlStore",
    "UTCDateTime",
    "claims",
    "create_store_engine",
    "executions",
    "health",
    "metadata",
    "normalize_database_url",
    "pending",
    "redact_url",
    "schedules",
    "steps",
]

SYNC_BATCH = 1000


class SqlStore:
    """Schedules, executions and claims in SQL through SQLAlchemy Core (see module docstring)."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self.url = url_or_engine.url.render_as_string(hide_password=True)
        else:
            self.engine = create_store_engine(url_or_engine)
            self.url = redact_url(url_or_engine)
        self._upsert_step = _step_upsert(self.dialect)
        self._upsert_health = _health_upsert(self.dialect)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        # Single reads need no transaction: one round trip instead of three.
        self._reader = (
            self.engine.execution_options(cloaca_read=True) if self.dialect == "sqlite"
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ensure_schema(self) -> None:
        """Create or upgrade the tables (Alembic migrations shipped in the package)."""
        with self._schema_lock:
            if not self._schema_ready:
                from .migrations import upgrade

                upgrade(self.engine)
                self._schema_ready = True

    def ping(self) -> None:
        """Open a connection (and prove the database answers)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def dispose(self) -> None:
        """Forget pooled connections (after a fork, the child must not reuse them)."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- schedules ---------------------------------------------------------

    def sync_triggers(
        self, specs: Iterable[TriggerSpec], now: float, prune: bool = True, spread: bool = False
    ) -> None:
        t = schedules
        with self.engine.begin() as conn:
            existing = conn.execute(select(*(t.c[name] for name in rules.SYNC_FIELDS))).all()
            plan = rules.sync_plan([row._mapping for row in existing], specs, now, prune, spread)
            for name, values in plan.changed.items():
                conn.execute(update(t).where(t.c.trigger_name == name).values(**values))
            if plan.gone:
                conn.execute(update(t).where(t.c.trigger_name.in_(plan.gone)).values(**plan.gone_values))
        # In batches, each one statement that leaves alone a row another process created meanwhile.
        for start in range(0, len(plan.new), SYNC_BATCH):
            with self.engine.begin() as conn:
                conn.execute(self._insert_missing(t), plan.new[start:start + SYNC_BATCH])

    def _insert_missing(self, table: Table) -> Any:
        """An INSERT that leaves alone a row whose key, or any unique column, exists (no error, nothing
        written). Without a conflict target: a claim conflicts on two keys at once, and PostgreSQL
        may find either first."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        if self.dialect in ("mysql", "mariadb"):
            return insert(table).prefix_with("IGNORE")
        return insert(table)

    def claim_due(self, now: float, limit: int) -> list[DuePoll]:
        t = schedules
        due = and_(
            t.c.enabled.is_(True),
            t.c.registered.is_(True),
            t.c.next_poll_at <= now,
            or_(t.c.poll_lease_until.is_(None), t.c.poll_lease_until < now),
        )
        behind = (now - t.c.next_poll_at) / t.c.poll_interval  # >= 0 on a due row
        # rules.advance: the first slot of the row's own grid after now. SQLite's CAST truncates
        # (the floor of a value >= 0) and needs no math functions; PostgreSQL's CAST would round.
        whole = cast(behind, Integer) if self.dialect == "sqlite" else func.floor(behind)
        advanced = t.c.next_poll_at + (whole + 1) * t.c.poll_interval
        stamped = {"next_poll_at": advanced, "last_poll_at": rules.utc(now)}
        columns = [t.c[name] for name in rules.DUE_FIELDS]
        with self.engine.begin() as conn:
            if self.engine.dialect.update_returning:
                pick = select(t.c.trigger_name).where(due).order_by(t.c.next_poll_at).limit(limit)
                if self.dialect == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                rows = conn.execute(
                    update(t)
                    .where(t.c.trigger_name.in_(pick.scalar_subquery()), t.c.next_poll_at <= now)
                    .values(**stamped)
                    .returning(*columns)
                ).all()
                return [
                    rules.due_poll(r.trigger_name, r.poll_interval, r.next_poll_at, r.consecutive_errors)
                    for r in rows
                ]
            picked = conn.execute(
                select(*columns).where(due).order_by(t.c.next_poll_at).limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if picked:
                conn.execute(
                    update(t).where(t.c.trigger_name.in_([r.trigger_name for r in picked])).values(**stamped)
                )
        return [
            rules.due_poll(
                r.trigger_name, r.poll_interval, rules.advance(r.next_poll_at, r.poll_interval, now),
                r.consecutive_errors,
            )
            for r in picked
        ]

    def begin_poll(
        self, name: str, now: float, lease_seconds: float, token: str, *, hold: bool = True,
        slot_end: float | None = None,
    ) -> PollLease | PollRefusal:
        t = schedules
        taken = 0
        if hold:
            conditions = [t.c.trigger_name == name, t.c.enabled.is_(True),
                          or_(_lease_free(now), t.c.poll_token.is_(None))]
            if slot_end is not None:
                conditions.append(t.c.next_poll_at <= slot_end)
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(t).where(*conditions).values(**rules.poll_hold(now, lease_seconds, token))
                ).rowcount
                row = conn.execute(_POLL_ROW, {"name": name}).first()
        else:
            row = self._read_one(_POLL_ROW, {"name": name})
        return rules.poll_start(
            name, None if row is None else row._mapping, now, lease_seconds, token,
            hold=hold, taken=bool(taken), slot_end=slot_end,
        )

    def _read_one(self, statement: Any, params: dict[str, Any]) -> Any:
        """One row from a single SELECT outside any transaction.

        Pooled connections are not pinged before use (that would double the
        round trips of the hot path); a connection the database dropped is
        found out here, and the read is tried once more on a new one.
        """
        for attempt in (1, 2):
            try:
                with self._reader.connect() as conn:
                    return conn.execute(statement, params).first()
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        return None  # pragma: no cover - the loop returns or raises

    def extend_poll_lease(self, name: str, token: str, until: float, now: float) -> bool:
        t = schedules
        with self.engine.begin() as conn:
            done = conn.execute(
                update(t)
                .where(t.c.trigger_name == name, or_(_lease_free(now), t.c.poll_token == token))
                .values(poll_lease_until=until, poll_token=token)
            ).rowcount
        return bool(done)

    def finish_poll(
        self, lease: PollLease, outcome: PollOutcome, now: float, hold_until: float | None = None
    ) -> bool:
        return rules.finish_poll(lease, outcome, now, hold_until, self._write_poll)

    def _write_poll(self, change: PollChange) -> int:
        t = schedules
        values = {name: t.c[name] + 1 if v is rules.INCREMENT else v for name, v in change.values.items()}
        matches = [t.c[name] == value for name, value in change.conditions.items()]
        with self.engine.begin() as conn:
            return int(conn.execute(update(t).where(*matches).values(**values)).rowcount)

    def list_schedules(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schedules).order_by(schedules.c.trigger_name)).all()
        return [rules.schedule_dict(row._mapping) for row in rows]

    def get_schedule(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(schedules).where(schedules.c.trigger_name == name)).first()
        if row is None:
            raise rules.unknown_trigger(name, f"store {self.url}")
        return rules.schedule_dict(row._mapping)

    def set_enabled(
        self, name: str, enabled: bool, *, note: str | None = None, by: str | None = None
    ) -> None:
        rules.check_enabled(name, enabled)
        values = rules.switch_values(name, enabled, self.now(), note, by)
        t = schedules
        with self.engine.begin() as conn:
            changed = conn.execute(update(t).where(t.c.trigger_name == name).values(**values)).rowcount
        if not changed:
            raise rules.unknown_trigger(name, f"store {self.url}")

    # -- executions and claims ------------------------------------------------

    def now(self) -> float:
        row = self._read_one(text(rules.clock_query(self.dialect)), {})
        return float(row[0])

    def record_fire(self, execution: NewExecution, *, claim: bool, now: float, deadline: float) -> bool:
        row = rules.execution_row(execution, deadline)
        if not claim and self.dialect != "sqlite":
            # No claim: one INSERT is the whole write, one round trip outside a transaction.
            with self._reader.connect() as conn:
                conn.execute(insert(executions).values(**row))
            return True
        tried = False
        if claim and self.dialect == "postgresql":
            # One statement, one round trip (a fire's first step waits for it): the claim's
            # INSERT ... ON CONFLICT DO NOTHING feeds the execution's, so the row is written only
            # with its claim. If the work is claimed, whether its holder has ended is decided below.
            new_claim = rules.claim_row(execution, now)
            params = {**row, **{f"claim_{name}": value for name, value in new_claim.items()}}
            with self._reader.connect() as conn:
                if conn.execute(_claiming_fire(tuple(row), tuple(new_claim)), params).first() is not None:
                    return True
            tried = True
        with self.engine.begin() as conn:
            if claim and not self._claim(conn, execution, now, tried):
                return False
            conn.execute(insert(executions).values(**row))
        return True

    def _claim(self, conn: Connection, execution: NewExecution, now: float, tried: bool = False) -> bool:
        """Take the (trigger, context hash) claim in ``conn``'s transaction, or say it is held.

        PostgreSQL and SQLite first try ``INSERT ... ON CONFLICT DO NOTHING``:
        with no claim (the usual case) that is the only statement. Otherwise,
        and on MySQL/MariaDB (where that INSERT would share-lock the row and
        two takeovers would deadlock), the holder is read and the claim taken
        over only if its execution is no longer active, and only from that
        holder, so two takeovers cannot both win. ``tried``: that INSERT has just found the
        claim held (see ``record_fire``).
        """
        c, e = claims, executions
        new_claim = rules.claim_row(execution, now)
        key = c.c.claim_key == new_claim["claim_key"]
        if self.dialect in ("postgresql", "sqlite") and not tried:
            insert_new = self._insert_missing(c).values(**new_claim)
            # psycopg reports -1 rows for ON CONFLICT DO NOTHING: ask for the row instead.
            if conn.execute(insert_new.returning(c.c.execution_id)).first() is not None:
                return True
        holder = conn.execute(select(c.c.execution_id).where(key)).scalar()
        if holder is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(c).values(**new_claim))
            except IntegrityError:
                return False
            return True
        active = select(e.c.execution_id).where(e.c.execution_id == holder, e.c.status.in_(ACTIVE_STATUSES))
        return bool(conn.execute(
            update(c).where(key, c.c.execution_id == holder, ~active.exists())
            .values(**rules.claim_holder(execution, now))
        ).rowcount)

    def start_step(self, execution_id: str, task_id: str, now: float, lease_until: float) -> bool:
        row = rules.step_row(execution_id, task_id, now, rules.step_change(now))
        execution = {"eid": execution_id, "tid": task_id, "lease": lease_until, "at": rules.utc(now)}
        params = {**execution, **_step_params(row)}
        if self.dialect == "postgresql":
            # One statement, one round trip: the step row is written only if the execution was.
            with self._reader.connect() as conn:
                return conn.execute(_START_STEP_POSTGRESQL, params).first() is not None
        with self.engine.begin() as conn:
            if not conn.execute(_START_EXECUTION, params).rowcount:
                return False
            conn.execute(self._upsert_step, params)
        return True

    def end_step(
        self, execution_id: str, task_id: str, now: float, idle_until: float,
        retry_until: float | None = None,
    ) -> bool:
        with self.engine.begin() as conn:
            queries = _StepEndQueries(self, conn)
            return rules.end_step(queries, execution_id, task_id, now, idle_until, retry_until)

    def request_end(
        self, execution_id: str, status: str, error: str | None, now: float, task_id: str | None = None
    ) -> bool:
        with self.engine.begin() as conn:
            return rules.request_end(_StepEndQueries(self, conn), execution_id, status, error, now, task_id)

    def renew_leases(self, execution_ids: Collection[str], until: float) -> set[str]:
        ids = set(execution_ids)
        if not ids:
            return set()
        params = {"ids": list(ids), "until": until}
        # One statement outside a transaction; MySQL/MariaDB have no UPDATE ... RETURNING: read after.
        with self._reader.connect() as conn:
            if self.engine.dialect.update_returning:
                active = set(conn.execute(_RENEW.returning(executions.c.execution_id), params).scalars())
            else:
                conn.execute(_RENEW, params)
                active = set(conn.execute(_GIVEN_ACTIVE, params).scalars())
        return ids - active

    def finish_execution(self, execution_id: str, status: str, error: str | None, at: datetime) -> bool:
        values = rules.execution_end(status, error, at)
        e = executions
        with self.engine.begin() as conn:
            done = conn.execute(
                update(e).where(e.c.execution_id == execution_id, e.c.status.in_(ACTIVE_STATUSES))
                .values(**values)
            ).rowcount
            conn.execute(delete(claims).where(claims.c.execution_id == execution_id))
        return bool(done)

    def end_overdue(self, execution_id: str, status: str, error: str | None, now: float) -> bool:
        values = rules.execution_end(status, error, rules.utc(now))
        e = executions
        with self.engine.begin() as conn:
            done = conn.execute(
                update(e).where(
                    e.c.execution_id == execution_id, e.c.status.in_(ACTIVE_STATUSES), e.c.deadline_at < now
                ).values(**values)
            ).rowcount
            if done:
                conn.execute(delete(claims).where(claims.c.execution_id == execution_id))
        return bool(done)

    def sweep_candidates(
        self, now: float, limit: int, after: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        e, s = executions, steps
        query = select(*(e.c[name] for name in rules.SWEEP_FIELDS)).where(
            e.c.status.in_(ACTIVE_STATUSES), e.c.deadline_at < now
        )
        if after is not None:
            deadline, last_id = after
            query = query.where(or_(
                e.c.deadline_at > deadline, and_(e.c.deadline_at == deadline, e.c.execution_id > last_id)
            ))
        query = query.order_by(*(e.c[name] for name in rules.SWEEP_ORDER)).limit(limit)
        with self.engine.connect() as conn:
            rows = [row._mapping for row in conn.execute(query)]
            ids = [row["execution_id"] for row in rows]
            found = conn.execute(
                select(s).where(s.c.execution_id.in_(ids)).order_by(*(s.c[name] for name in rules.STEP_ORDER))
            ).all() if ids else []
        return rules.sweep_candidates(rows, [step._mapping for step in found])

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(executions).where(executions.c.execution_id == execution_id)).first()
        if row is None:
            raise rules.unknown_execution(execution_id)
        return rules.execution_dict(row._mapping)

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        rules.check_history_query(status, limit, offset)
        e = executions
        query = select(e).where(e.c.trigger_name == trigger_name)
        if status is not None:
            query = query.where(e.c.status == status)
        query = query.order_by(e.c.started_at.desc(), e.c.execution_id.desc())
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [rules.execution_dict(row._mapping) for row in rows]

    def prune_executions(
        self, completed_before: datetime, batch_size: int = 1000, batches: int | None = None
    ) -> int:
        e = executions
        total = 0
        for _ in itertools.repeat(None) if batches is None else range(batches):
            with self.engine.begin() as conn:
                ids = [r.execution_id for r in conn.execute(
                    select(e.c.execution_id)
                    .where(e.c.status.in_(FINAL_STATUSES), e.c.completed_at < completed_before)
                    .limit(batch_size)
                )]
                if not ids:
                    break
                total += conn.execute(delete(e).where(e.c.execution_id.in_(ids))).rowcount
                conn.execute(delete(steps).where(steps.c.execution_id.in_(ids)))
        return total


    # -- pending fires (overlap policies) -----------------------------------------

    def hold_pending(self, pending: PendingFire, *, replace: bool, max_pending: int) -> Held:
        with self.engine.begin() as conn:
            return rules.hold_pending(_PendingQueries(self, conn), pending, replace, max_pending)

    def next_pending(self, trigger_name: str, dedup_hash: str) -> PendingFire | None:
        row = self._read_one(_PENDING_OF_KEY.limit(1), {"name": trigger_name, "hash": dedup_hash})
        return None if row is None else rules.pending_fire(row._mapping)

    def start_pending(
        self, pending_id: str, execution: NewExecution, *, now: float, deadline: float
    ) -> bool:
        with self.engine.connect() as conn, conn.begin() as transaction:
            started = rules.start_pending(_PendingQueries(self, conn), pending_id, execution, now, deadline)
            if not started:
                transaction.rollback()
        return started

    def orphan_pending(self, limit: int) -> list[tuple[str, str]]:
        p, c, e = pending, claims, executions
        held = select(c.c.claim_key).join(e, e.c.execution_id == c.c.execution_id).where(
            c.c.trigger_name == p.c.trigger_name, c.c.context_hash == p.c.dedup_hash,
            e.c.status.in_(ACTIVE_STATUSES),
        )
        query = (
            select(p.c.trigger_name, p.c.dedup_hash).where(~held.exists())
            .group_by(p.c.trigger_name, p.c.dedup_hash)
            .order_by(func.min(p.c.created_at), p.c.trigger_name, p.c.dedup_hash).limit(limit)
        )
        with self.engine.connect() as conn:
            return [(row.trigger_name, row.dedup_hash) for row in conn.execute(query)]

    def pending_fires(self, trigger_name: str) -> list[PendingFire]:
        query = select(pending).where(pending.c.trigger_name == trigger_name).order_by(*_PENDING_ORDER)
        with self.engine.connect() as conn:
            return [rules.pending_fire(row._mapping) for row in conn.execute(query)]


    # -- health counts -----------------------------------------------------------

    def save_health(self, process: str, rows: Collection[HealthCounts]) -> None:
        values = rules.health_rows(process, rows)
        if values:
            with self.engine.begin() as conn:
                conn.execute(self._upsert_health, values)

    def health(self, trigger_name: str | None, since: datetime) -> list[HealthCounts]:
        h = health
        query = select(h.c.minute, h.c.counts).where(h.c.minute >= rules.health_since(since))
        if trigger_name is not None:
            query = query.where(h.c.shard == health_shard(trigger_name))
        with self.engine.connect() as conn:
            return rules.merged_health((row._mapping for row in conn.execute(query)), trigger_name)

    def last_polls(self, since: datetime | None = None) -> dict[str, datetime]:
        h = health
        query = select(h.c.counts).where(h.c.last_poll_at.is_not(None))
        if since is not None:
            query = query.where(h.c.minute >= rules.health_since(since))
        with self.engine.connect() as conn:
            return rules.last_polls_of(row._mapping for row in conn.execute(query))

    def prune_health(self, before: datetime) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(delete(health).where(health.c.minute < before)).rowcount or 0)


class _StepEndQueries:
    """:class:`cloaca_celery.store.StepEndQueries` in the transaction of ``conn``."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store, self.conn = store, conn

    def locked_execution(self, execution_id: str) -> Any:
        row = self.conn.execute(_LOCKED_EXECUTION, {"eid": execution_id}).first()
        return None if row is None else row._mapping

    def write_step(self, row: dict[str, Any], change: dict[str, Any]) -> None:
        self.conn.execute(self.store._upsert_step, _step_params(row))  # sets the change's columns from row

    def others_live(self, execution_id: str, task_id: str | None) -> bool:
        query = _LIVE_STEP if task_id is None else _OTHER_LIVE_STEP
        return self.conn.execute(query, {"eid": execution_id, "tid": task_id}).first() is not None

    def write_execution(self, execution_id: str, change: rules.ExecutionChange) -> None:
        if change.values:
            e = executions
            self.conn.execute(update(e).where(e.c.execution_id == execution_id).values(**change.values))
        if change.ends:
            self.conn.execute(delete(claims).where(claims.c.execution_id == execution_id))


class _PendingQueries:
    """:class:`cloaca_celery.store.HoldQueries` and :class:`~cloaca_celery.store.StartQueries`
    in the transaction of ``conn``."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store, self.conn = store, conn

    def locked_holder(self, trigger_name: str, dedup_hash: str) -> str | None:
        key = rules.claim_key(trigger_name, dedup_hash)
        holder: str | None = self.conn.execute(_LOCKED_CLAIM, {"key": key}).scalar()
        return holder

    def active_task_ids(self, execution_id: str) -> list[str] | None:
        row = self.conn.execute(_ACTIVE_TASK_IDS, {"eid": execution_id}).first()
        return None if row is None else list(row.task_ids or [])

    def waiting_fires(self, trigger_name: str, dedup_hash: str) -> list[Any]:
        found = self.conn.execute(_WAITING_OF_KEY, {"name": trigger_name, "hash": dedup_hash})
        return [row._mapping for row in found]

    def drop_pending(self, pending_ids: list[str]) -> int:
        return int(self.conn.execute(delete(pending).where(pending.c.pending_id.in_(pending_ids))).rowcount)

    def insert_pending(self, row: dict[str, Any]) -> None:
        self.conn.execute(insert(pending).values(**row))

    def take_claim(self, execution: NewExecution, now: float) -> bool:
        return self.store._claim(self.conn, execution, now)

    def insert_execution(self, row: dict[str, Any]) -> None:
        self.conn.execute(insert(executions).values(**row))


def _health_upsert(dialect: str) -> Any:
    """Insert a health row, or replace the counts of the row with its key (the same process's)."""
    changed = [name for name in rules.HEALTH_FIELDS if name != "group_key"]
    if dialect in ("postgresql", "sqlite"):
        upsert = (postgresql if dialect == "postgresql" else sqlite).insert(health)
        return upsert.on_conflict_do_update(
            index_elements=[health.c.group_key], set_={name: upsert.excluded[name] for name in changed}
        )
    if dialect in ("mysql", "mariadb"):
        row = mysql.insert(health)
        return row.on_duplicate_key_update({name: row.inserted[name] for name in changed})
    return insert(health)


def _step_params(row: dict[str, Any]) -> dict[str, Any]:
    """A step row (``rules.step_row``) as the parameters of :data:`_STEP_ROW`."""
    return {f"step_{name}": value for name, value in row.items()}


_STEP_ROW = {column.name: cast(bindparam(f"step_{column.name}"), column.type) for column in steps.columns}
"""The values of a step row to insert, as parameters (prefixed: an INSERT reserves the column names)."""


def _step_upsert(dialect: str) -> Any:
    """Insert the step row of :data:`_STEP_ROW`, or set its ``STEP_CHANGE_FIELDS`` on its task's row."""
    if dialect in ("postgresql", "sqlite"):
        insert_row = (postgresql if dialect == "postgresql" else sqlite).insert(steps).values(**_STEP_ROW)
        return _or_set_change(insert_row)
    upsert = mysql.insert(steps).values(**_STEP_ROW)
    return upsert.on_duplicate_key_update({name: upsert.inserted[name] for name in rules.STEP_CHANGE_FIELDS})


def _or_set_change(upsert: Any) -> Any:
    """``ON CONFLICT``: set the ``STEP_CHANGE_FIELDS`` of the existing row from the row proposed."""
    change = {name: upsert.excluded[name] for name in rules.STEP_CHANGE_FIELDS}
    return upsert.on_conflict_do_update(index_elements=[steps.c.task_id], set_=change)


def _start_execution() -> Any:
    """A step starts (``SqlStore.start_step``): the execution's conditional UPDATE."""
    e, s = executions, steps
    others_live = select(s.c.task_id).where(
        s.c.execution_id == bindparam("eid"), s.c.task_id != bindparam("tid"), s.c.state.in_(LIVE_STEP_STATES)
    ).exists()
    lease: Any = bindparam("lease", type_=Double())
    return update(e).where(
        e.c.execution_id == bindparam("eid"), e.c.status.in_(ACTIVE_STATUSES), e.c.ending_status.is_(None)
    ).values(
        status="running", running_at=func.coalesce(e.c.running_at, bindparam("at", type_=UTCDateTime())),
        deadline_at=case((and_(others_live, e.c.deadline_at > lease), e.c.deadline_at), else_=lease),
    )


def _start_step_postgresql() -> Any:
    """``SqlStore.start_step`` in one statement: the execution's UPDATE feeds the step row's upsert.

    Its commit does not wait for the WAL to reach the disk (``synchronous_commit`` off for this
    transaction only): the step's body waits for this statement, and a start lost in a crash of
    PostgreSQL itself is one the sweep can tell from the step's end and the lease renewals, as
    for any start the store did not record (see ``docs/design.md``).
    """
    started = _START_EXECUTION.returning(executions.c.execution_id).cte("started")
    lazy = select(func.set_config("synchronous_commit", "off", true()).label("setting")).cte("lazy_commit")
    source = select(*(
        started.c.execution_id if name == "execution_id" else value for name, value in _STEP_ROW.items()
    )).select_from(started.join(lazy, true()))
    insert_row = postgresql.insert(steps).from_select(list(_STEP_ROW), source)
    return _or_set_change(insert_row).returning(steps.c.task_id)


@functools.cache
def _claiming_fire(execution_fields: tuple[str, ...], claim_fields: tuple[str, ...]) -> Any:
    """``SqlStore.record_fire`` of a claiming fire on PostgreSQL, in one statement: the claim's
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` is the source of the execution's INSERT, so
    both rows are written, or (the work is claimed) neither. Parameters: the execution row's
    fields, and the claim row's prefixed ``claim_``."""
    c, e = claims, executions
    claimed = postgresql.insert(c).values(
        {name: bindparam(f"claim_{name}", type_=c.c[name].type) for name in claim_fields}
    ).on_conflict_do_nothing().returning(c.c.execution_id).cte("claimed")
    source = select(*(
        claimed.c.execution_id if name == "execution_id" else bindparam(name, type_=e.c[name].type)
        for name in execution_fields
    ))
    return insert(e).from_select(list(execution_fields), source).returning(e.c.execution_id)


_START_EXECUTION = _start_execution()
_START_STEP_POSTGRESQL = _start_step_postgresql()

_LOCKED_EXECUTION = select(*(executions.c[name] for name in rules.ENDING_FIELDS)).where(
    executions.c.execution_id == bindparam("eid"), executions.c.status.in_(ACTIVE_STATUSES)
).with_for_update()
"""An active execution's row, locked: see ``rules.StepEndQueries.locked_execution``."""

_LIVE_STEP = select(steps.c.task_id).where(
    steps.c.execution_id == bindparam("eid"), steps.c.state.in_(LIVE_STEP_STATES)
).limit(1).with_for_update()
"""A running or waiting step of an execution: a locking read, so the latest rows, whatever the
transaction read before."""
_OTHER_LIVE_STEP = _LIVE_STEP.where(steps.c.task_id != bindparam("tid"))

_GIVEN_AND_ACTIVE = (
    executions.c.execution_id.in_(bindparam("ids", expanding=True)), executions.c.status.in_(ACTIVE_STATUSES)
)
_GIVEN_ACTIVE = select(executions.c.execution_id).where(*_GIVEN_AND_ACTIVE)
_RENEW = update(executions).where(*_GIVEN_AND_ACTIVE).values(deadline_at=case(
    (executions.c.deadline_at > bindparam("until", type_=Double()), executions.c.deadline_at),
    else_=bindparam("until", type_=Double()),
))
"""A heartbeat: ``deadline_at = max(deadline_at, until)`` of the active executions among ``ids``."""

_PENDING_ORDER = [pending.c[name] for name in rules.PENDING_ORDER]
_KEY = (pending.c.trigger_name == bindparam("name"), pending.c.dedup_hash == bindparam("hash"))
_PENDING_OF_KEY = select(pending).where(*_KEY).order_by(*_PENDING_ORDER)
_WAITING_OF_KEY = select(pending.c.pending_id, pending.c.created_at).where(*_KEY)

_LOCKED_CLAIM = select(claims.c.execution_id).where(claims.c.claim_key == bindparam("key")).with_for_update()
"""The holder of a claim, its row locked: see ``rules.HoldQueries.locked_holder``."""

_ACTIVE_TASK_IDS = select(executions.c.task_ids).where(
    executions.c.execution_id == bindparam("eid"), executions.c.status.in_(ACTIVE_STATUSES)
)

_POLL_ROW = select(*(schedules.c[name] for name in rules.POLL_ROW_FIELDS)).where(
    schedules.c.trigger_name == bindparam("name")
)


def _lease_free(now: float) -> Any:
    t = schedules
    return or_(t.c.poll_lease_until.is_(None), t.c.poll_lease_until < now)
