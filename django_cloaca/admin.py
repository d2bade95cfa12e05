"""Admin pages: triggers (switch on/off with a note, poll now, preview) and their read-only history.

Enable, disable, "poll now" and "preview" are admin actions (POST with CSRF,
change permission required; see :mod:`django_cloaca.operations`, which also
writes each to the trigger's change history). Enabling and disabling write
the schedule row, which the next poll reads: no restart of beat or workers.
"Poll now" sends the same ``cloaca.poll`` task that beat's dispatcher sends,
so it takes the same lease and the same deduplication claim. Every string is
translatable.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from cloaca_celery.builtin_tasks import DISPATCH_TASK
from cloaca_celery.durations import format_duration

from .health_admin import HealthAdminMixin
from .models import TriggerExecution, TriggerSchedule
from .operations import TriggerOperations, celery_app


def _pretty_json(value: Any) -> str:
    return format_html("<pre class='cloaca-json'>{}</pre>",
                       json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@admin.register(TriggerSchedule)
class TriggerScheduleAdmin(HealthAdminMixin, TriggerOperations):
    list_display = (
        "trigger_name", "workflow", "interval", "enabled", "last_poll_at", "last_fire_at",
        "errors", "short_error", "health_status", "pause", "history",
    )
    list_display_links = ("trigger_name",)
    list_editable = ("enabled",)
    list_filter = ("enabled", "registered", "allow_concurrent", "workflow")
    search_fields = ("trigger_name", "workflow", "last_error")
    ordering = ("trigger_name",)
    actions = ("enable_triggers", "disable_triggers", "poll_now", "preview_triggers")
    readonly_fields = (
        "trigger_name", "workflow", "interval", "allow_concurrent", "registered", "next_poll",
        "last_poll_at", "last_fire_at", "consecutive_errors", "last_error", "last_error_at",
        "dedup_count", "state_json", "created_at", "updated_at", "history",
        "paused_at", "paused_by", "pause_note", *HealthAdminMixin.health_fields,
    )
    fieldsets = (
        (None, {"fields": ("trigger_name", "workflow", "enabled", "history")}),
        (_("Pause"), {"fields": ("paused_at", "paused_by", "pause_note", "note")}),
        (_("Schedule"), {"fields": ("interval", "allow_concurrent", "registered", "next_poll")}),
        (_("Last activity"), {"fields": (
            "last_poll_at", "last_fire_at", "consecutive_errors", "last_error", "last_error_at",
            "dedup_count",
        )}),
        (_("State"), {"classes": ("collapse",), "fields": ("state_json", "created_at", "updated_at")}),
        HealthAdminMixin.health_fieldset,
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("interval"), ordering="poll_interval")
    def interval(self, obj: TriggerSchedule) -> str:
        return format_duration(obj.poll_interval)

    @admin.display(description=_("errors"), ordering="consecutive_errors")
    def errors(self, obj: TriggerSchedule) -> int:
        return obj.consecutive_errors

    @admin.display(description=_("last error"))
    def short_error(self, obj: TriggerSchedule) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 60 else text[:57] + "..."

    @admin.display(description=_("state"))
    def state_json(self, obj: TriggerSchedule) -> str:
        return _pretty_json(obj.state)

    @admin.display(description=_("history"))
    def history(self, obj: TriggerSchedule) -> str:
        url = reverse("admin:django_cloaca_triggerexecution_changelist")
        return format_html("<a href='{}?{}'>{}</a>", url,
                           urlencode({"trigger_name__exact": obj.trigger_name}), gettext("executions"))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method == "GET":
            self._warn_if_not_installed(request)
        return super().changelist_view(request, extra_context)

    def _warn_if_not_installed(self, request: HttpRequest) -> None:
        try:
            schedule = celery_app().conf.beat_schedule or {}
        except Exception:  # noqa: BLE001 - no Celery app is itself the thing to warn about
            schedule = {}
        if DISPATCH_TASK not in schedule:
            self.message_user(
                request,
                gettext("The Celery app of this project has no 'cloaca.dispatch' beat entry: call "
                        "cloaca_celery.install(app) in your Celery module, or triggers are not polled."),
                messages.WARNING,
            )

    @admin.display(description=_("paused"), ordering="paused_at")
    def pause(self, obj: TriggerSchedule) -> str:
        """Who paused a disabled trigger, when, and why (clipped; the whole note on hover); "-" if enabled."""
        if obj.enabled or obj.paused_at is None:
            return "-"
        when = obj.paused_at.strftime("%Y-%m-%d %H:%M")
        who = (gettext("by %(who)s, %(when)s") % {"who": obj.paused_by, "when": when} if obj.paused_by
               else when)
        note = obj.pause_note or ""
        short = note if len(note) <= 40 else note[:39] + "…"
        return format_html("<span class='cloaca-pause' style='display: inline-block; min-width: 13em' "
                           "title='{}'>{}<br>{}</span>", note, who, short)


class ScheduledChoicesFilter(admin.SimpleListFilter):
    """A filter of the executions list whose choices come from the schedules table.

    Django's own ``list_filter`` on a field runs ``SELECT DISTINCT`` over the
    whole executions table on every page view; the schedules table has one
    row per trigger. The parameter is the one a field filter would use, so
    links such as a trigger's "executions" keep working.
    """

    field: str

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = TriggerSchedule.objects.order_by(self.field).values_list(self.field, flat=True).distinct()
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.field: value})


class TriggerFilter(ScheduledChoicesFilter):
    title = _("trigger")
    parameter_name = "trigger_name__exact"
    field = "trigger_name"


class WorkflowFilter(ScheduledChoicesFilter):
    title = _("workflow")
    parameter_name = "workflow__exact"
    field = "workflow"


@admin.register(TriggerExecution)
class TriggerExecutionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("short_id", "trigger_link", "workflow", "status", "started_at",
                    "completed_at", "duration_display")
    list_filter = ("status", TriggerFilter, WorkflowFilter)
    search_fields = ("execution_id", "trigger_name", "context_hash", "context", "error")
    date_hierarchy = "started_at"
    ordering = ("-started_at",)
    fieldsets = (
        (None, {"fields": ("execution_id", "trigger_link", "workflow", "status")}),
        (_("Timing"), {"fields": ("started_at", "running_at", "completed_at", "duration_display")}),
        (_("Context"), {"fields": ("context_json", "context_hash")}),
        (_("Outcome"), {"fields": ("error", "task_ids_json")}),
    )
    readonly_fields = (
        "execution_id", "trigger_link", "workflow", "status", "started_at", "running_at",
        "completed_at", "duration_display", "context_json", "context_hash", "error", "task_ids_json",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("execution"), ordering="execution_id")
    def short_id(self, obj: TriggerExecution) -> str:
        return obj.execution_id[:8]

    @admin.display(description=_("trigger"), ordering="trigger_name")
    def trigger_link(self, obj: TriggerExecution) -> str:
        url = reverse("admin:django_cloaca_triggerschedule_change", args=[obj.trigger_name])
        return format_html("<a href='{}'>{}</a>", url, obj.trigger_name)

    @admin.display(description=_("duration"))
    def duration_display(self, obj: TriggerExecution) -> str:
        seconds = obj.duration
        return "-" if seconds is None else f"{seconds:.2f}s"

    @admin.display(description=_("context"))
    def context_json(self, obj: TriggerExecution) -> str:
        return _pretty_json(obj.context)

    @admin.display(description=_("task ids"))
    def task_ids_json(self, obj: TriggerExecution) -> str:
        return _pretty_json(obj.task_ids)
