"""The cloaca tables in SQLAlchemy Core: what the Alembic migrations build and ``SqlStore`` queries.

They are the tables of ``django_cloaca/models.py`` too, column for column and
index for index (``docs/design.md``, "Tables", lists the few differences the
two toolkits cannot avoid). Change them only together with a migration in
``cloaca_celery/migrations/versions`` and one in ``django_cloaca/migrations``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (naive UTC where tz is unsupported),
    to the microsecond (MySQL/MariaDB get ``DATETIME(6)``)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("cloaca stores timezone-aware datetimes only")
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = MetaData()

MYSQL_TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
"""On MySQL/MariaDB: any Unicode, and names compared exactly ("Orders" is not "orders")."""

schedules = Table(
    "cloaca_schedules",
    metadata,
    Column("trigger_name", String(200), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("poll_interval", Double, nullable=False),
    Column("allow_concurrent", Boolean, nullable=False, default=False),
    Column("overlap", String(16), nullable=False, default="skip", server_default="skip"),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("registered", Boolean, nullable=False, default=True),
    Column("next_poll_at", Double, nullable=False),
    Column("poll_lease_until", Double, nullable=True),
    Column("poll_token", String(36), nullable=True),
    Column("last_poll_at", UTCDateTime, nullable=True),
    Column("last_fire_at", UTCDateTime, nullable=True),
    Column("consecutive_errors", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime, nullable=True),
    Column("state", JSON, nullable=False, default=dict),
    Column("state_version", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("dedup_count", Integer, nullable=False, default=0, server_default="0"),
    Column("paused_at", UTCDateTime, nullable=True),
    Column("paused_by", String(200), nullable=True),
    Column("pause_note", Text, nullable=True),
    Index("ix_cloaca_schedules_due", "enabled", "registered", "next_poll_at"),
    **MYSQL_TABLE_OPTIONS,
)

executions = Table(
    "cloaca_executions",
    metadata,
    Column("execution_id", String(36), primary_key=True),
    Column("trigger_name", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("context", JSON, nullable=False),
    Column("context_hash", String(64), nullable=False),
    Column("dedup_hash", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("task_ids", JSON, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("running_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("error", Text, nullable=True),
    Column("deadline_at", Double, nullable=True),
    Column("ending_status", String(16), nullable=True),
    Index("ix_cloaca_executions_trigger", "trigger_name", "started_at"),
    Index("ix_cloaca_executions_status", "status", "started_at"),
    Index("ix_cloaca_executions_started", "started_at"),
    Index("ix_cloaca_executions_deadline", "status", "deadline_at"),
    **MYSQL_TABLE_OPTIONS,
)
"""One row per fire. ``deadline_at`` (epoch seconds on the store's clock; ``NULL`` once ended) is
when the sweep must look at it; ``ending_status`` an end requested while steps still ran;
``dedup_hash`` the hash of the work's key (``NULL`` in rows written before dedup keys: the
context hash)."""

steps = Table(
    "cloaca_steps",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("execution_id", String(36), nullable=False),
    Column("state", String(8), nullable=False),
    Column("started_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("waiting_until", Double, nullable=True),
    Index("ix_cloaca_steps_execution", "execution_id"),
    **MYSQL_TABLE_OPTIONS,
)
"""One row per step task that started: ``running``, ``waiting`` (to retry, until
``waiting_until``) or ``done``; deleted with its execution when history is pruned."""

claims = Table(
    "cloaca_claims",
    metadata,
    Column("claim_key", String(265), primary_key=True),
    Column("trigger_name", String(200), nullable=False),
    Column("context_hash", String(64), nullable=False),
    Column("execution_id", String(36), nullable=False),
    Column("claimed_at", Double, nullable=False),
    UniqueConstraint("trigger_name", "context_hash", name="uq_cloaca_claims_key"),
    Index("ix_cloaca_claims_execution", "execution_id"),
    **MYSQL_TABLE_OPTIONS,
)
"""One row per (trigger, work key) an active execution holds, until it ends (claims never
expire by time); ``claim_key`` is :func:`cloaca_celery.store.claim_key` of the pair. The column
``context_hash`` holds the hash of the work's key (the execution's ``dedup_hash``), which is the
context hash unless the trigger has a ``dedup_key``."""

pending = Table(
    "cloaca_pending",
    metadata,
    Column("pending_id", String(36), primary_key=True),
    Column("trigger_name", String(200), nullable=False),
    Column("dedup_hash", String(64), nullable=False),
    Column("context", JSON, nullable=False),
    Column("context_hash", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Index("ix_cloaca_pending_key", "trigger_name", "dedup_hash", "created_at"),
    **MYSQL_TABLE_OPTIONS,
)
"""Fires held back by a trigger's overlap policy while an active execution holds their key
(``created_at``: epoch seconds on the store's clock); each is deleted when it starts, or when a
newer one pushes it out."""

health = Table(
    "cloaca_health_minutes",
    metadata,
    Column("group_key", String(140), primary_key=True),
    Column("minute", UTCDateTime, nullable=False),
    Column("process", String(100), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("counts", JSON, nullable=False),
    Column("last_poll_at", UTCDateTime, nullable=True),
    Index("ix_cloaca_health_min_shard", "shard", "minute"),
    Index("ix_cloaca_health_min_minute", "minute"),
    **MYSQL_TABLE_OPTIONS,
)
"""Health counts: one row per (minute, process, group of triggers) holding that process's totals for
the minute of each trigger of the group, a JSON object by trigger name
(:func:`cloaca_celery.store.health_entry`); ``group_key`` is :func:`cloaca_celery.store.health_group_key`
of the three, ``shard`` the group (:func:`cloaca_celery.counters.health_shard`), ``last_poll_at`` the
latest poll of the row. A row is replaced at each flush; the rows of a minute are summed when read.
Durations are histograms over :data:`cloaca_celery.counters.BUCKETS`."""
