"""``SqlStore``: the SQLAlchemy implementation of :class:`~cloaca_celery.store.Store`.

Works on SQLite (the embedded default), PostgreSQL and MySQL/MariaDB. The
tables are in :mod:`cloaca_celery.sqlschema`, the engines in
:mod:`cloaca_celery.sqlengine`; this module holds the queries. The
dispatcher's claim is one ``UPDATE ... RETURNING`` where the database has it
(PostgreSQL with ``FOR UPDATE SKIP LOCKED`` in the sub-select, SQLite inside
a ``BEGIN IMMEDIATE`` transaction), and ``SELECT ... FOR UPDATE SKIP LOCKED``
followed by an ``UPDATE`` in one transaction on MySQL/MariaDB.
"""

from __future__ import annotations

import logging
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

from .errors import UnknownTriggerError
from .sqlengine import create_store_engine, normalize_database_url, redact_url
from .sqlschema import MYSQL_TABLE_OPTIONS, UTCDateTime, claims, executions, metadata, schedules
from .store import (
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

logger = logging.getLogger("cloaca_celery.sqlstore")

SYNC_BATCH = 1000


SCHEDULE_FIELDS = (
    "trigger_name", "workflow", "poll_interval", "allow_concurrent", "enabled",
    "registered", "last_poll_at", "last_fire_at", "consecutive_errors", "last_error",
    "last_error_at", "state", "created_at", "updated_at", "dedup_count",
)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class SqlStore:
    """Schedules in SQL through SQLAlchemy Core (see module docstring)."""

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
        wanted = {spec.name: spec for spec in specs}
        now_dt = _utc(now)
        t = schedules
        with self.engine.begin() as conn:
            rows = {
                row.trigger_name: row
                for row in conn.execute(
                    select(t.c.trigger_name, t.c.workflow, t.c.poll_interval,
                           t.c.allow_concurrent, t.c.registered)
                )
            }
            for name, spec in wanted.items():
                row = rows.get(name)
                if row is None:
                    continue
                if (row.workflow, row.poll_interval, row.allow_concurrent, row.registered) != (
                    spec.workflow, spec.poll_interval, spec.allow_concurrent, True
                ):
                    conn.execute(
                        update(t).where(t.c.trigger_name == name).values(
                            workflow=spec.workflow, poll_interval=spec.poll_interval,
                            allow_concurrent=spec.allow_concurrent, registered=True,
                            updated_at=now_dt,
                            next_poll_at=first_slot(name, spec.poll_interval, now, spread),
                        )
                    )
            gone = [name for name, row in rows.items() if prune and name not in wanted and row.registered]
            if gone:
                conn.execute(
                    update(t).where(t.c.trigger_name.in_(gone)).values(registered=False, updated_at=now_dt)
                )
        new_rows = [
            {
                "trigger_name": name, "workflow": spec.workflow, "poll_interval": spec.poll_interval,
                "allow_concurrent": spec.allow_concurrent, "enabled": True, "registered": True,
                "consecutive_errors": 0, "next_poll_at": first_slot(name, spec.poll_interval, now, spread),
                "state": {}, "state_version": 0, "created_at": now_dt, "updated_at": now_dt,
            }
            for name, spec in wanted.items() if name not in rows
        ]
        # In batches, each one statement that leaves alone a row another process created meanwhile.
        for start in range(0, len(new_rows), SYNC_BATCH):
            with self.engine.begin() as conn:
                conn.execute(self._insert_missing(schedules, ["trigger_name"]),
                             new_rows[start:start + SYNC_BATCH])

    def _insert_missing(self, table: Table, key: list[str]) -> Any:
        """An INSERT that leaves alone a row whose ``key`` exists (no error, nothing written)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=key)
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=key)
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
        stamped = {"next_poll_at": advanced, "last_poll_at": _utc(now)}
        with self.engine.begin() as conn:
            if self.engine.dialect.update_returning:
                pick = select(t.c.trigger_name).where(due).order_by(t.c.next_poll_at).limit(limit)
                if self.dialect == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                rows = conn.execute(
                    update(t)
                    .where(t.c.trigger_name.in_(pick.scalar_subquery()), t.c.next_poll_at <= now)
                    .values(**stamped)
                    .returning(t.c.trigger_name, t.c.poll_interval, t.c.next_poll_at, t.c.consecutive_errors)
                ).all()
                return [
                    due_poll(r.trigger_name, r.poll_interval, r.next_poll_at, r.consecutive_errors)
                    for r in rows
                ]
            picked = conn.execute(
                select(t.c.trigger_name, t.c.poll_interval, t.c.next_poll_at, t.c.consecutive_errors)
                .where(due)
                .order_by(t.c.next_poll_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if picked:
                conn.execute(
                    update(t).where(t.c.trigger_name.in_([r.trigger_name for r in picked])).values(**stamped)
                )
        return [
            due_poll(r.trigger_name, r.poll_interval, advance(r.next_poll_at, r.poll_interval, now),
                     r.consecutive_errors)
            for r in picked
        ]

    def begin_poll(
        self, name: str, now: float, lease_seconds: float, token: str, *, hold: bool = True,
        slot_end: float | None = None,
    ) -> PollLease | PollRefusal:
        t = schedules
        if hold:
            conditions = [t.c.trigger_name == name, t.c.enabled.is_(True),
                          or_(_lease_free(now), t.c.poll_token.is_(None))]
            if slot_end is not None:
                conditions.append(t.c.next_poll_at <= slot_end)
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(t)
                    .where(*conditions)
                    .values(poll_lease_until=now + lease_seconds, poll_token=token, last_poll_at=_utc(now))
                ).rowcount
                row = conn.execute(_POLL_ROW, {"name": name}).first()
        else:
            taken = 0
            row = self._read_one(_POLL_ROW, {"name": name})
        if row is None:
            return PollRefusal(name, "missing")
        refusal = lease_refusal(name, row.enabled, row.poll_lease_until, row.poll_token, now)
        if hold and not taken:
            if refusal is None and slot_end is not None and float(row.next_poll_at) > slot_end:
                return PollRefusal(name, "late")
            return refusal or PollRefusal(name, "running")
        if not hold and refusal is not None:
            return refusal
        return PollLease(
            trigger_name=name, token=token, until=now + lease_seconds,
            state=dict(row.state or {}), state_version=int(row.state_version),
            consecutive_errors=int(row.consecutive_errors), held=hold,
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
        t = schedules
        values: dict[str, Any] = {}
        if lease.held:
            kept = hold_until is not None and hold_until > now
            values.update(poll_lease_until=hold_until if kept else None, poll_token=None)
        if outcome.error is not None:
            values.update(
                consecutive_errors=t.c.consecutive_errors + 1,
                last_error=outcome.error[:4000],
                last_error_at=_utc(now),
            )
        elif lease.consecutive_errors:
            values["consecutive_errors"] = 0
        if outcome.fired_at is not None:
            values["last_fire_at"] = outcome.fired_at
        if outcome.state is not None:
            values.update(state=outcome.state, state_version=t.c.state_version + 1)
        if outcome.deduplicated:
            values["dedup_count"] = t.c.dedup_count + 1
        if not values:
            return True
        conditions = [t.c.trigger_name == lease.trigger_name]
        if lease.held:
            conditions.append(t.c.poll_token == lease.token)
        if outcome.state is not None:
            conditions.append(t.c.state_version == lease.state_version)
        with self.engine.begin() as conn:
            done = conn.execute(update(t).where(*conditions).values(**values)).rowcount
        return bool(done)

    def list_schedules(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schedules).order_by(schedules.c.trigger_name)).all()
        return [_schedule_dict(row._mapping) for row in rows]

    def get_schedule(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(schedules).where(schedules.c.trigger_name == name)).first()
        if row is None:
            raise UnknownTriggerError(
                f"unknown trigger {name!r}: no schedule row in the store {self.url}"
            )
        return _schedule_dict(row._mapping)

    def set_enabled(self, name: str, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"set_enabled({name!r}, ...): enabled must be True or False")
        t = schedules
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(t).where(t.c.trigger_name == name).values(
                    enabled=enabled, updated_at=datetime.now(timezone.utc)
                )
            ).rowcount
        if not changed:
            raise UnknownTriggerError(
                f"unknown trigger {name!r}: no schedule row in the store {self.url}"
            )


    # -- executions and claims ------------------------------------------------

    def record_fire(self, execution: NewExecution, claim_until: float | None, now: float) -> bool:
        e = executions
        row = {
            "execution_id": execution.execution_id, "trigger_name": execution.trigger_name,
            "workflow": execution.workflow, "context": execution.context,
            "context_hash": execution.context_hash, "status": "queued",
            "task_ids": list(execution.task_ids), "started_at": execution.started_at,
        }
        if claim_until is None and self.dialect != "sqlite":
            # No claim: one INSERT is the whole write, one round trip outside a transaction.
            with self._reader.connect() as conn:
                conn.execute(insert(e).values(**row))
            return True
        with self.engine.begin() as conn:
            if claim_until is not None and not self._claim(conn, execution, claim_until, now):
                return False
            conn.execute(insert(e).values(**row))
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
        claim = {"execution_id": execution.execution_id, "claimed_at": now, "expires_at": claim_until}
        key = and_(c.c.trigger_name == execution.trigger_name, c.c.context_hash == execution.context_hash)
        if self.dialect in ("postgresql", "sqlite"):
            new_claim = self._insert_missing(c, ["trigger_name", "context_hash"]).values(
                trigger_name=execution.trigger_name, context_hash=execution.context_hash, **claim
            )
            # psycopg reports -1 rows for ON CONFLICT DO NOTHING: ask for the row instead.
            if conn.execute(new_claim.returning(c.c.execution_id)).first() is not None:
                return True
        holder = conn.execute(select(c.c.execution_id, c.c.expires_at).where(key)).first()
        if holder is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(c).values(
                        trigger_name=execution.trigger_name, context_hash=execution.context_hash, **claim
                    ))
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
            .values(**claim)
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
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"finish_execution: {status!r} is not a final status ({', '.join(FINAL_STATUSES)})"
            )
        e = executions
        with self.engine.begin() as conn:
            done = conn.execute(
                update(e)
                .where(e.c.execution_id == execution_id, e.c.status.in_(ACTIVE_STATUSES))
                .values(status=status, completed_at=at, error=None if error is None else error[:8000])
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
        return [_execution_dict(row._mapping) for row in rows]

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(executions).where(executions.c.execution_id == execution_id)).first()
        if row is None:
            raise KeyError(f"unknown execution {execution_id!r}")
        return _execution_dict(row._mapping)

    def execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        e = executions
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        _check_page(limit, offset)
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
        return [_execution_dict(row._mapping) for row in rows]

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


_POLL_ROW = select(
    schedules.c.enabled, schedules.c.state, schedules.c.state_version, schedules.c.consecutive_errors,
    schedules.c.poll_lease_until, schedules.c.poll_token, schedules.c.next_poll_at,
).where(schedules.c.trigger_name == bindparam("name"))


def _lease_free(now: float) -> Any:
    t = schedules
    return or_(t.c.poll_lease_until.is_(None), t.c.poll_lease_until < now)


def _schedule_dict(row: Any) -> dict[str, Any]:
    data = {name: row[name] for name in SCHEDULE_FIELDS}
    data["poll_interval"] = float(data["poll_interval"])
    data["enabled"] = bool(data["enabled"])
    data["allow_concurrent"] = bool(data["allow_concurrent"])
    data["registered"] = bool(data["registered"])
    data["state"] = dict(data["state"] or {})
    next_poll = row["next_poll_at"]
    data["next_poll_at"] = _utc(float(next_poll)) if next_poll is not None else None
    return data


def _check_page(limit: int | None, offset: int | None) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


EXECUTION_FIELDS = (
    "execution_id", "trigger_name", "workflow", "context", "context_hash", "status",
    "task_ids", "started_at", "running_at", "completed_at", "error",
)


def _execution_dict(row: Any) -> dict[str, Any]:
    data = {name: row[name] for name in EXECUTION_FIELDS}
    data["context"] = dict(data["context"] or {})
    data["task_ids"] = list(data["task_ids"] or [])
    return data
