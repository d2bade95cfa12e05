"""Trigger schedules, executions and claims: the same tables as cloaca's SQL store.

The tables have the names, columns, keys and indexes of
``cloaca_celery.sqlschema`` (the few differences the two toolkits cannot avoid
are listed in ``docs/design.md``), so that the engine, the admin and ``celery
-A proj cloaca`` all read one history. Scheduling instants the database
compares and adds (``next_poll_at``, poll leases, an execution's deadline,
its steps' times) are epoch seconds; times for people are aware datetimes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

from cloaca_celery.store import EXECUTION_FIELDS, OVERLAP_POLICIES, STEP_STATES

STATUS_CHOICES = [
    ("queued", _("queued")),
    ("running", _("running")),
    ("succeeded", _("succeeded")),
    ("failed", _("failed")),
    ("revoked", _("revoked")),
    ("lost", _("lost")),
]


class TriggerScheduleQuerySet(models.QuerySet["TriggerSchedule"]):
    def due(self, now: float) -> TriggerScheduleQuerySet:
        """Enabled, registered triggers whose poll slot has come and that no poll holds."""
        return self.filter(enabled=True, registered=True, next_poll_at__lte=now).filter(
            models.Q(poll_lease_until__isnull=True) | models.Q(poll_lease_until__lt=now)
        )


class TriggerSchedule(models.Model):
    trigger_name = models.CharField(_("trigger"), max_length=200, primary_key=True)
    workflow = models.CharField(max_length=200)
    poll_interval = models.FloatField(help_text=_("seconds"))
    allow_concurrent = models.BooleanField(default=False)
    overlap = models.CharField(
        max_length=16, default="skip", choices=[(policy, policy) for policy in OVERLAP_POLICIES],
        help_text=_("what a fire does while an execution of the same work is active"),
    )
    enabled = models.BooleanField(default=True, help_text=_("Switched off, the trigger is not polled."))
    registered = models.BooleanField(default=True, help_text=_("False once no worker defines the trigger."))
    next_poll_at = models.FloatField(help_text=_("epoch seconds"))
    poll_lease_until = models.FloatField(null=True, blank=True)
    poll_token = models.CharField(max_length=36, null=True, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_fire_at = models.DateTimeField(null=True, blank=True)
    consecutive_errors = models.IntegerField(default=0)
    last_error = models.TextField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    state = models.JSONField(default=dict, blank=True)
    state_version = models.IntegerField(default=0)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    dedup_count = models.IntegerField(_("deduplicated"), default=0)
    paused_at = models.DateTimeField(
        null=True, blank=True, help_text=_("when it was disabled (database clock)")
    )
    paused_by = models.CharField(max_length=200, null=True, blank=True, help_text=_("who disabled it"))
    pause_note = models.TextField(null=True, blank=True, help_text=_("why it was disabled"))

    objects = TriggerScheduleQuerySet.as_manager()

    class Meta:
        db_table = "cloaca_schedules"
        ordering = ["trigger_name"]
        verbose_name = _("trigger")
        verbose_name_plural = _("triggers")
        indexes = [
            models.Index(fields=["enabled", "registered", "next_poll_at"], name="ix_cloaca_schedules_due"),
        ]

    def __str__(self) -> str:
        return self.trigger_name

    @property
    def next_poll(self) -> datetime:
        return datetime.fromtimestamp(self.next_poll_at, tz=timezone.utc)


class TriggerExecution(models.Model):
    execution_id = models.CharField(_("execution"), max_length=36, primary_key=True)
    trigger_name = models.CharField(_("trigger"), max_length=200)
    workflow = models.CharField(max_length=200)
    context = models.JSONField(default=dict)
    context_hash = models.CharField(max_length=64)
    dedup_hash = models.CharField(
        max_length=64, null=True, blank=True,
        help_text=_("the hash of the work's key (empty: the context hash)"),
    )
    status = models.CharField(max_length=16, choices=STATUS_CHOICES)
    task_ids = models.JSONField(default=list)
    started_at = models.DateTimeField(help_text=_("when the trigger fired"))
    running_at = models.DateTimeField(null=True, blank=True, help_text=_("when the first step began"))
    completed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    deadline_at = models.FloatField(
        null=True, blank=True,
        help_text=_("epoch seconds on the database's clock: when the sweep looks at it"),
    )
    ending_status = models.CharField(
        max_length=16, null=True, blank=True, help_text=_("an end requested while other steps still ran")
    )

    class Meta:
        db_table = "cloaca_executions"
        ordering = ["-started_at"]
        get_latest_by = "started_at"
        verbose_name = _("execution")
        verbose_name_plural = _("executions")
        indexes = [
            models.Index(fields=["trigger_name", "started_at"], name="ix_cloaca_executions_trigger"),
            models.Index(fields=["status", "started_at"], name="ix_cloaca_executions_status"),
            models.Index(fields=["started_at"], name="ix_cloaca_executions_started"),
            models.Index(fields=["status", "deadline_at"], name="ix_cloaca_executions_deadline"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger_name} {self.execution_id[:8]} {self.status}"

    @property
    def duration(self) -> float | None:
        if self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in EXECUTION_FIELDS}


class TriggerStep(models.Model):
    """A step task of an execution that started: ``running``, ``waiting`` (to retry) or ``done``.

    Deleted with its execution when history is pruned (no foreign key: the
    tables stay the same as the SQL store's)."""

    task_id = models.CharField(max_length=255, primary_key=True)
    execution_id = models.CharField(max_length=36)
    state = models.CharField(max_length=8, choices=[(state, state) for state in STEP_STATES])
    started_at = models.FloatField(help_text=_("epoch seconds"))
    updated_at = models.FloatField(help_text=_("epoch seconds"))
    waiting_until = models.FloatField(null=True, blank=True, help_text=_("epoch seconds"))

    class Meta:
        db_table = "cloaca_steps"
        verbose_name = _("step")
        indexes = [models.Index(fields=["execution_id"], name="ix_cloaca_steps_execution")]

    def __str__(self) -> str:
        return f"{self.task_id} {self.state}"


class TriggerClaim(models.Model):
    """A (trigger, work key) that an active execution holds, until it ends.

    Its primary key is ``claim_key`` (``cloaca_celery.store.claim_key``:
    ``"<trigger>\\x1f<hash>"``), one column because Django before 5.2 has no
    composite primary key; the pair is unique as well. ``context_hash`` holds
    the hash of the work's key (the execution's ``dedup_hash``): the context
    hash unless the trigger has a ``dedup_key``."""

    claim_key = models.CharField(max_length=265, primary_key=True)
    trigger_name = models.CharField(max_length=200)
    context_hash = models.CharField(max_length=64)
    execution_id = models.CharField(max_length=36)
    claimed_at = models.FloatField()

    class Meta:
        db_table = "cloaca_claims"
        verbose_name = _("claim")
        indexes = [models.Index(fields=["execution_id"], name="ix_cloaca_claims_execution")]
        constraints = [
            models.UniqueConstraint(fields=["trigger_name", "context_hash"], name="uq_cloaca_claims_key"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger_name} {self.context_hash[:12]}"


class TriggerPending(models.Model):
    """A fire held back by its trigger's overlap policy while an active execution holds its key.

    Deleted when it starts (once that execution ends), or when a newer fire of
    the key pushes it out. ``created_at`` is epoch seconds on the database's clock."""

    pending_id = models.CharField(max_length=36, primary_key=True)
    trigger_name = models.CharField(_("trigger"), max_length=200)
    dedup_hash = models.CharField(max_length=64)
    context = models.JSONField(default=dict)
    context_hash = models.CharField(max_length=64)
    created_at = models.FloatField(help_text=_("epoch seconds"))

    class Meta:
        db_table = "cloaca_pending"
        verbose_name = _("pending fire")
        indexes = [
            models.Index(fields=["trigger_name", "dedup_hash", "created_at"], name="ix_cloaca_pending_key"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger_name} {self.dedup_hash[:12]} pending"


def _no_buckets() -> list[int]:
    """The default of a column of ``0005_health`` (a migration refers to it: keep it)."""
    return []


def _no_counts() -> dict[str, Any]:
    return {}


class HealthMinute(models.Model):
    """One process's health counts of one minute for one group of triggers (``cloaca_celery.counters``).

    Its primary key is ``group_key`` (``cloaca_celery.store.health_group_key``
    of the minute, process and group); ``counts`` holds each trigger's counts
    of the group (``cloaca_celery.store.health_entry``) by name. Each process
    replaces its own row at every flush, and readers sum the rows of a
    minute."""

    group_key = models.CharField(max_length=140, primary_key=True)
    minute = models.DateTimeField()
    process = models.CharField(max_length=100)
    shard = models.IntegerField()
    counts = models.JSONField(default=_no_counts)
    last_poll_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "cloaca_health_minutes"
        verbose_name = _("health counts of a minute")
        verbose_name_plural = _("health counts of minutes")
        indexes = [
            models.Index(fields=["shard", "minute"], name="ix_cloaca_health_min_shard"),
            models.Index(fields=["minute"], name="ix_cloaca_health_min_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.process} group {self.shard}"
