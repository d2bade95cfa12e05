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
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    and_,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import store as rules
from .sqlengine import create_store_engine, normalize_database_url, redact_url
from .sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime, claims, executions, metadata, schedules
from .store import (
    ACTIVE_STATUSES,
    EXECUTION_FIELDS,
    FINAL_STATUSES,
    SCHEDULE_FIELDS,
    DuePoll,
    NewExecution,
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
    "metadata",
    "normalize_database_url",
    "redact_url",
    "schedules",
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
        advanced = case(
            (t.c.next_poll_at + t.c.poll_interval > now, t.c.next_poll_at + t.c.poll_interval),
            else_=now + t.c.poll_interval,
        )
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

    def set_enabled(self, name: str, enabled: bool) -> None:
        rules.check_enabled(name, enabled)
        t = schedules
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(t).where(t.c.trigger_name == name).values(
                    enabled=enabled, updated_at=datetime.now(timezone.utc)
                )
            ).rowcount
        if not changed:
            raise rules.unknown_trigger(name, f"store {self.url}")

    # -- executions and claims ------------------------------------------------

    def record_fire(self, execution: NewExecution, claim_until: float | None, now: float) -> bool:
        row = rules.execution_row(execution)
        if claim_until is None and self.dialect != "sqlite":
            # No claim: one INSERT is the whole write, one round trip outside a transaction.
            with self._reader.connect() as conn:
                conn.execute(insert(executions).values(**row))
            return True
        with self.engine.begin() as conn:
            if claim_until is not None and not self._claim(conn, execution, claim_until, now):
                return False
            conn.execute(insert(executions).values(**row))
        return True

    def _claim(self, conn: Connection, execution: NewExecution, claim_until: float, now: float) -> bool:
        """Take the (trigger, context hash) claim in ``conn``'s transaction, or say it is held.

        PostgreSQL and SQLite first try ``INSERT ... ON CONFLICT DO NOTHING``:
        with no claim (the usual case) that is the only statement. Otherwise,
        and on MySQL/MariaDB (where that INSERT would share-lock the row and
        two takeovers would deadlock), the holder is read and the claim taken
        over only if it expired or its execution is no longer active, and only
        from that holder, so two takeovers cannot both win.
        """
        c, e = claims, executions
        new_claim = rules.claim_row(execution, claim_until, now)
        key = c.c.claim_key == new_claim["claim_key"]
        if self.dialect in ("postgresql", "sqlite"):
            insert_new = self._insert_missing(c).values(**new_claim)
            # psycopg reports -1 rows for ON CONFLICT DO NOTHING: ask for the row instead.
            if conn.execute(insert_new.returning(c.c.execution_id)).first() is not None:
                return True
        holder = conn.execute(select(c.c.execution_id, c.c.expires_at).where(key)).first()
        if holder is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(c).values(**new_claim))
            except IntegrityError:
                return False
            return True
        ended = select(e.c.execution_id).where(
            e.c.execution_id == holder.execution_id, e.c.status.in_(ACTIVE_STATUSES)
        )
        return bool(conn.execute(
            update(c)
            .where(key, c.c.execution_id == holder.execution_id)
            .where(or_(c.c.expires_at < now, ~ended.exists()))
            .values(**rules.claim_holder(execution, claim_until, now))
        ).rowcount)

    def mark_running(self, execution_id: str, at: datetime) -> bool:
        e = executions
        with self.engine.begin() as conn:
            done = conn.execute(
                update(e).where(e.c.execution_id == execution_id, e.c.status == "queued")
                .values(status="running", running_at=at)
            ).rowcount
        return bool(done)

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

    def active_executions(self, started_before: datetime, limit: int) -> list[dict[str, Any]]:
        e = executions
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(e).where(e.c.status.in_(ACTIVE_STATUSES), e.c.started_at < started_before)
                .order_by(e.c.started_at).limit(limit)
            ).all()
        return [rules.execution_dict(row._mapping) for row in rows]

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

    def prune_executions(self, completed_before: datetime, batch_size: int = 1000) -> int:
        e = executions
        total = 0
        while True:
            with self.engine.begin() as conn:
                ids = [r.execution_id for r in conn.execute(
                    select(e.c.execution_id)
                    .where(e.c.status.in_(FINAL_STATUSES), e.c.completed_at < completed_before)
                    .limit(batch_size)
                )]
                if not ids:
                    return total
                total += conn.execute(delete(e).where(e.c.execution_id.in_(ids))).rowcount


_POLL_ROW = select(*(schedules.c[name] for name in rules.POLL_ROW_FIELDS)).where(
    schedules.c.trigger_name == bindparam("name")
)


def _lease_free(now: float) -> Any:
    t = schedules
    return or_(t.c.poll_lease_until.is_(None), t.c.poll_lease_until < now)
